"""MDM (Tevet et al. 2023), trans_enc variant, with MDM's module names so official state dicts load.

x (B, T, F) (F = 263 HumanML3D features; MDM's own layout (B, F, 1, T) is also accepted) ->
per-frame Linear(F -> d) -> [cond token; frames] (sequence-first) + sinusoidal positions ->
``nn.TransformerEncoder`` (post-LN, GELU) -> drop the cond token -> Linear(d -> F).
The cond token = time embedding (MDM's interleaved sin/cos table at the integer step ->
Linear-SiLU-Linear) + Linear(text embedding). The text embedding (CLIP 512-d or MiniLM 384-d)
is computed outside the model and passed as ``text``; zeros are the null condition. Dropping it
with probability ``cond_mask_prob`` in training is the caller's job (the objective draws it
from its generator), so the forward is deterministic apart from dropout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# -- MDM's building blocks (names and buffers as in model/mdm.py) ---------------------------


class PositionalEncoding(nn.Module):
    """pe[:, 0::2] = sin(pos · w), pe[:, 1::2] = cos(pos · w); buffer (max_len, 1, d)."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[: x.shape[0]])


class TimestepEmbedder(nn.Module):
    def __init__(self, latent_dim: int, sequence_pos_encoder: PositionalEncoding) -> None:
        super().__init__()
        self.sequence_pos_encoder = sequence_pos_encoder
        self.time_embed = nn.Sequential(
            nn.Linear(latent_dim, latent_dim), nn.SiLU(), nn.Linear(latent_dim, latent_dim)
        )

    def forward(self, timesteps: Tensor) -> Tensor:
        """(B,) integer steps -> (1, B, d)."""
        return self.time_embed(self.sequence_pos_encoder.pe[timesteps.long()]).permute(1, 0, 2)


class InputProcess(nn.Module):
    def __init__(self, input_feats: int, latent_dim: int) -> None:
        super().__init__()
        self.poseEmbedding = nn.Linear(input_feats, latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.poseEmbedding(x.transpose(0, 1))  # (B, T, F) -> (T, B, d)


class OutputProcess(nn.Module):
    def __init__(self, input_feats: int, latent_dim: int) -> None:
        super().__init__()
        self.poseFinal = nn.Linear(latent_dim, input_feats)

    def forward(self, h: Tensor) -> Tensor:
        return self.poseFinal(h).transpose(0, 1)  # (T, B, d) -> (B, T, F)


# -- the model ------------------------------------------------------------------------------


class MDM(nn.Module):
    """MDM trans_enc: 8 x (d 512, 4 heads, FF 1024, GELU, post-LN), dropout 0.1."""

    def __init__(
        self,
        input_feats: int = 263,
        latent_dim: int = 512,
        ff_size: int = 1024,
        num_layers: int = 8,
        num_heads: int = 4,
        dropout: float = 0.1,
        text_dim: int = 512,
        mask_frames: bool = False,
        max_len: int = 5000,
    ) -> None:
        super().__init__()
        self.input_feats, self.latent_dim, self.text_dim = input_feats, latent_dim, text_dim
        self.mask_frames = mask_frames
        self.input_process = InputProcess(input_feats, latent_dim)
        self.sequence_pos_encoder = PositionalEncoding(latent_dim, dropout, max_len)
        layer = nn.TransformerEncoderLayer(
            latent_dim, num_heads, ff_size, dropout, activation="gelu"
        )
        # no nested tensors: the taps need plain (T+1, B, d) layer outputs
        self.seqTransEncoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.embed_timestep = TimestepEmbedder(latent_dim, self.sequence_pos_encoder)
        self.embed_text = nn.Linear(text_dim, latent_dim)
        self.output_process = OutputProcess(input_feats, latent_dim)

    def forward(
        self, x: Tensor, timesteps: Tensor, text: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """x (B, T, F) or MDM's (B, F, 1, T); timesteps (B,) integer steps; text (B, text_dim)
        (None or zeros: unconditional); mask (B, T) valid frames (used when mask_frames)."""
        mdm_layout = x.ndim == 4
        if mdm_layout:
            x = x.squeeze(2).transpose(1, 2)
        b = x.shape[0]
        emb = self.embed_timestep(timesteps)  # (1, B, d)
        if text is None:
            text = x.new_zeros(b, self.text_dim)
        emb = emb + self.embed_text(text.to(x.dtype))[None]
        h = torch.cat([emb, self.input_process(x)], 0)  # (T+1, B, d)
        h = self.sequence_pos_encoder(h)
        pad = None
        if self.mask_frames and mask is not None:
            pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask.bool()], 1)  # True = ignore
        h = self.seqTransEncoder(h, src_key_padding_mask=pad)[1:]
        out = self.output_process(h)
        return out.transpose(1, 2).unsqueeze(2) if mdm_layout else out


def load_mdm_checkpoint(model: MDM, path) -> None:
    """An official MDM checkpoint (``model000475000.pt``), read with ``weights_only``: as MDM's
    ``load_model_wo_clip``, ``clip_model.*`` and the fixed positional tables are skipped; every
    other key must match (no missing, no unexpected key)."""
    from layersync.assets import AssetError, load_torch_state

    state = load_torch_state(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    fixed = ("sequence_pos_encoder.pe", "embed_timestep.sequence_pos_encoder.pe")
    state = {k: v for k, v in state.items() if not k.startswith("clip_model.") and k not in fixed}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise AssetError(
            f"{path}: not an MDM trans_enc state dict for this configuration: {e}"
        ) from e
    missing = [k for k in missing if k not in fixed]
    if missing or unexpected:
        raise AssetError(
            f"{path}: MDM state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
