"""SiT: the class-conditional latent image backbone (willisma/SiT, itself DiT with a flow objective).

Parameter names, initialisation and forward pass match the official code, so the released SiT
(and DiT, LayerSync) checkpoints load with ``strict=True`` and give the same outputs. LayerSync taps
the outputs of ``blocks.0 .. blocks.{depth-1}`` (see :func:`block_names`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn as nn

from layersync.nn import (
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    SiTBlock,
    TimestepEmbedder,
    init_sit_weights,
    sincos_pos_embed,
)

__all__ = ["SIT_CONFIGS", "SiT", "block_names", "build_sit", "load_sit_checkpoint"]


# -----------------------------------------------------------------------------
# Model


class SiT(nn.Module):
    """Scalable Interpolant Transformer over patchified latents (N, C, H, W)."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
    ):
        super().__init__()
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma

        # registration order matters: it fixes the order of random draws at init (as official)
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, ndim=2)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.num_tokens = self.x_embedder.num_patches
        # fixed 2-D sin-cos embedding, frozen but saved in the state dict (as in the checkpoints)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_tokens, hidden_size), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            [SiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init (see :func:`layersync.nn.init_sit_weights`) + the sin-cos ``pos_embed``."""
        init_sit_weights(self)
        pe = sincos_pos_embed(self.hidden_size, self.x_embedder.grid_size)
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(pe).float().unsqueeze(0))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W), each token laid out as (p, p, C)."""
        c, p = self.out_channels, self.patch_size
        h, w = self.x_embedder.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        *,
        force_drop_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x (N, C, H, W) latents, t (N,) times in [0, 1], y (N,) labels (``num_classes`` = null).

        Returns (N, C, H, W): with ``learn_sigma`` the extra C output channels are dropped, as in
        the official SiT forward (DiT's forward keeps them). In training mode labels are dropped
        with probability ``class_dropout_prob`` (optionally drawn from ``generator``);
        ``force_drop_ids == 1`` forces the null label.
        """
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        t = self.t_embedder(t)  # (N, D)
        y = self.y_embedder(y, self.training, force_drop_ids, generator)  # (N, D)
        c = t + y
        for block in self.blocks:
            x = block(x, c)  # (N, T, D): the tapped features
        x = self.final_layer(x, c)  # (N, T, p*p*out_channels)
        x = self.unpatchify(x)  # (N, out_channels, H, W)
        if self.learn_sigma:
            x, _ = x.chunk(2, dim=1)
        return x


# -----------------------------------------------------------------------------
# Presets

_SIZES = {  # name: (depth, hidden_size, num_heads)
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
}

SIT_CONFIGS: dict[str, dict[str, int]] = {
    f"SiT-{size}/{patch}": {"depth": d, "hidden_size": h, "num_heads": n, "patch_size": patch}
    for size, (d, h, n) in _SIZES.items()
    for patch in (2, 4, 8)
}


def build_sit(name: str, **overrides) -> SiT:
    """Build a preset (e.g. ``"SiT-XL/2"``); ``overrides`` are any other :class:`SiT` arguments."""
    if name not in SIT_CONFIGS:
        raise ValueError(f"unknown SiT preset {name!r}; valid names: {', '.join(SIT_CONFIGS)}")
    return SiT(**{**SIT_CONFIGS[name], **overrides})


def block_names(model: SiT) -> list[str]:
    """Ordered names of the tappable blocks: ``["blocks.0", ..., "blocks.{depth-1}"]``.

    LayerSync pairs are 1-based: pair "8<-16" taps ``blocks.7`` and ``blocks.15``.
    """
    return [f"blocks.{i}" for i in range(len(model.blocks))]


# -----------------------------------------------------------------------------
# Checkpoints

_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def _strip_prefixes(key: str) -> str:
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)})"


def load_sit_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    prefer_ema: bool = True,
) -> dict[str, torch.Tensor]:
    """Load SiT/DiT weights from ``.pt`` / ``.pth`` or ``.safetensors``; returns the state dict.

    Accepts a raw state dict (the released checkpoints, our ``model``/``ema.safetensors``) or a
    training checkpoint ``{"model": ..., "ema": ..., "opt": ..., "args": Namespace}`` as the
    official ``train.py`` saves it (``"ema"`` is taken if ``prefer_ema``, else ``"model"``).
    ``.pt`` files are read with ``torch.load(weights_only=True)`` (argparse ``Namespace`` allowed).
    "module." and "_orig_mod." key prefixes are stripped. If ``model`` is given the weights are
    loaded into it with ``strict=True``, after a check that raises a one-line ``ValueError``
    naming the file, the missing and unexpected keys and the shape mismatches.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SiT checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)

    if isinstance(obj, dict) and ("ema" in obj or "model" in obj):
        order = ("ema", "model") if prefer_ema else ("model", "ema")
        obj = next(obj[k] for k in order if k in obj)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors (nor a dict with 'ema'/'model')")
    state = {_strip_prefixes(k): v for k, v in obj.items()}

    if model is not None:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [
            f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or mismatched:
            problems = [
                f"{label} {_preview(items)}"
                for label, items in (
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                    ("shape mismatches", mismatched),
                )
                if items
            ]
            raise ValueError(
                f"{path}: checkpoint does not fit {type(model).__name__}: " + "; ".join(problems)
            )
        model.load_state_dict(state, strict=True)
    return state
