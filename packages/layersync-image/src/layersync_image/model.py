"""SiT: the class-conditional latent image backbone (willisma/SiT, itself DiT with a flow objective).

The model is core's N-d ``layersync.nn.SiT`` in 2-D. Parameter names, initialisation and forward
pass match the official code, so the released SiT
(and DiT, LayerSync) checkpoints load with ``strict=True`` and give the same outputs. LayerSync taps
the outputs of ``blocks.0 .. blocks.{depth-1}`` (see :func:`block_names`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn as nn

from layersync.nn import SIT_SIZES
from layersync.nn import SiT as CoreSiT

__all__ = ["SIT_CONFIGS", "SiT", "block_names", "build_sit", "load_sit_checkpoint"]


# -----------------------------------------------------------------------------
# Model


class SiT(CoreSiT):
    """Scalable Interpolant Transformer over patchified latents (N, C, H, W): the ndim=2,
    class-conditional case of :class:`layersync.nn.SiT` with the official defaults (ImageNet
    classes, ``learn_sigma=True``) and the official state-dict keys. ``input_size`` and
    ``patch_size`` stay ints here (square latents, square patches)."""

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
        super().__init__(
            (input_size, input_size),
            patch_size,
            in_channels,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            condition="class",
            num_classes=num_classes,
            class_dropout_prob=class_dropout_prob,
            learn_sigma=learn_sigma,
        )
        self.input_size = input_size
        self.patch_size = patch_size

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
        return super().forward(x, t, y, force_drop_ids=force_drop_ids, generator=generator)


# -----------------------------------------------------------------------------
# Presets

SIT_CONFIGS: dict[str, dict[str, int]] = {
    f"SiT-{size}/{patch}": {**dims, "patch_size": patch}
    for size, dims in ((s, SIT_SIZES[s]) for s in ("XL", "L", "B", "S"))
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
