"""Transformer parts shared by the DiT/SiT-style backbones of every modality.

Module and parameter names follow facebookresearch/DiT and willisma/SiT (and timm's ``Attention``
and ``Mlp``), so a backbone assembled from these parts loads the official checkpoints as they are:
``t_embedder.mlp.{0,2}``, ``y_embedder.embedding_table``, ``blocks.N.attn.{qkv,proj}``,
``blocks.N.mlp.{fc1,fc2}``, ``blocks.N.adaLN_modulation.1``, ``final_layer.{linear,adaLN_modulation.1}``
and ``x_embedder.proj`` (a strided convolution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Attention",
    "DiTBlock",
    "FinalLayer",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "SiTBlock",
    "TimestepEmbedder",
    "init_sit_weights",
    "modulate",
]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens x (B, T, D) by per-sample shift and scale (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# -----------------------------------------------------------------------------
# Embedders: patches, timesteps, class labels


class PatchEmbed(nn.Module):
    """Non-overlapping patches of a 1-D, 2-D or 3-D signal -> tokens (B, T, D).

    ``proj`` is a Conv{1,2,3}d with kernel = stride = patch (timm's ``PatchEmbed`` for 2-D, same
    key names). Tokens are ordered row-major over the patch grid, like
    :func:`layersync.nn.posembed.sincos_pos_embed`.
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        in_channels: int,
        embed_dim: int,
        ndim: int = 2,
        bias: bool = True,
    ):
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
        self.input_size = _ntuple(input_size, ndim, "input_size")
        self.patch_size = _ntuple(patch_size, ndim, "patch_size")
        for size, patch in zip(self.input_size, self.patch_size, strict=True):
            if size % patch:
                raise ValueError(f"input_size {self.input_size} not divisible by {self.patch_size}")
        self.grid_size = tuple(
            s // p for s, p in zip(self.input_size, self.patch_size, strict=True)
        )
        self.num_patches = math.prod(self.grid_size)
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
        self.proj = conv(
            in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, *grid) -> (B, T, D)


class TimestepEmbedder(nn.Module):
    """Scalar time -> vector: sinusoidal frequency features followed by a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        """(N,) possibly fractional times -> (N, dim): [cos(t f_k), sin(t f_k)], odd dim zero-padded.

        f_k = max_period ** (-k / (dim // 2)), k = 0 .. dim // 2 - 1 (GLIDE / DiT / SiT).
        """
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32) / half
        freqs = torch.exp(-math.log(max_period) * exponent).to(t.device)  # on CPU, as official
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> vector, with label dropout for classifier-free guidance.

    The table has ``num_classes + 1`` rows when ``dropout_prob > 0``; row ``num_classes`` is the
    null ("unconditional") label.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(
        self,
        labels: torch.Tensor,
        force_drop_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Replace labels by the null label: at random (prob ``dropout_prob``) or where
        ``force_drop_ids == 1``."""
        if force_drop_ids is None:
            draws = torch.rand(labels.shape[0], device=labels.device, generator=generator)
            drop_ids = draws < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(
        self,
        labels: torch.Tensor,
        train: bool,
        force_drop_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids, generator)
        return self.embedding_table(labels)


# -----------------------------------------------------------------------------
# Transformer block parts


class Attention(nn.Module):
    """Multi-head self-attention (timm key names ``qkv``/``proj``), fused SDPA kernel."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D); optional ``attn_mask`` as for ``F.scaled_dot_product_attention``
        (bool: True = attend), broadcastable to (B, heads, T, T)."""
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x.transpose(1, 2).reshape(B, T, D)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear -> tanh-approximated GELU -> Linear (timm key names ``fc1``/``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """A DiT/SiT transformer block with adaLN-Zero conditioning.

    ``forward(x, c)`` returns the block output after both residual additions: these (B, T, D)
    tokens are what LayerSync taps.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        mod = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + gate_msa.unsqueeze(1) * self.attn(h, attn_mask=attn_mask)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(h)
        return x


DiTBlock = SiTBlock  # same block, DiT's name


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + Linear to ``patch_elements * out_channels`` per token."""

    def __init__(self, hidden_size: int, patch_elements: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_elements * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# -----------------------------------------------------------------------------
# Initialisation (DiT/SiT ``initialize_weights``)


@torch.no_grad()
def init_sit_weights(model: nn.Module) -> nn.Module:
    """Apply the official DiT/SiT initialisation to every part of ``model`` built from this module.

    In this order (the order of the official code, so that under the same seed a model with the
    same module layout draws the same random numbers): xavier-uniform weights and zero biases on
    every ``nn.Linear``; patch embeddings initialised like a Linear (xavier on the flattened
    kernel, zero bias); label tables N(0, 0.02); timestep MLP weights N(0, 0.02); zero adaLN
    modulation in every block; zero adaLN modulation and output Linear in final layers.
    Position embeddings are not touched (set them with the sin-cos tables). Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    parts = list(model.modules())
    for module in parts:
        if isinstance(module, PatchEmbed):
            w = module.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            if module.proj.bias is not None:
                nn.init.zeros_(module.proj.bias)
    for module in parts:
        if isinstance(module, LabelEmbedder):
            nn.init.normal_(module.embedding_table.weight, std=0.02)
    for module in parts:
        if isinstance(module, TimestepEmbedder):
            nn.init.normal_(module.mlp[0].weight, std=0.02)
            nn.init.normal_(module.mlp[2].weight, std=0.02)
    for module in parts:
        if isinstance(module, SiTBlock):
            nn.init.zeros_(module.adaLN_modulation[-1].weight)
            nn.init.zeros_(module.adaLN_modulation[-1].bias)
        elif isinstance(module, FinalLayer):
            nn.init.zeros_(module.adaLN_modulation[-1].weight)
            nn.init.zeros_(module.adaLN_modulation[-1].bias)
            nn.init.zeros_(module.linear.weight)
            nn.init.zeros_(module.linear.bias)
    return model


def _ntuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} must be an int or {n} ints, got {value}")
    return value
