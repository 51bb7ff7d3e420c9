"""Block specs for other backbones: which blocks LayerSync indexes and how to read their tokens.

Fine-tuning a diffusers transformer with LayerSync takes three lines::

    sync = LayerSync(pipe.transformer, pairs="8<-16", weight=0.2, blocks="diffusers")
    with sync:
        pred = pipe.transformer(latents, encoder_hidden_states=text, timestep=t).sample
    loss = diffusion_loss + sync.loss()

:func:`diffusers_blocks` finds the depth axis of a diffusers transformer: ``transformer_blocks`` of
DiT/PixArt/SD3/Sana/LTX/CogVideoX-style models, the double-stream list followed by the
single-stream list of MMDiT models (Flux, Chroma, HunyuanVideo: ``transformer_blocks`` then
``single_transformer_blocks``; AuraFlow: ``joint_transformer_blocks`` then
``single_transformer_blocks``), or ``blocks`` (HunyuanDiT, Wan). Its token view keeps the image
(latent) stream of blocks that return both streams, ``(encoder_hidden_states, hidden_states)`` in
most MMDiT blocks, ``(hidden_states, encoder_hidden_states)`` in CogVideoX/Mochi/CogView4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layersync.taps import TokenView, unwrap_model

__all__ = ["BlockSpec", "diffusers_blocks"]

# Lists of blocks in forward order: the double-stream (joint) list runs before the single-stream one.
_DOUBLE = ("joint_transformer_blocks", "transformer_blocks")
_SINGLE = ("single_transformer_blocks",)
_PLAIN = ("blocks",)

# Position of the image (latent) stream in the tuple a block returns, by block class. A class not
# listed returns one tensor (B, T, D) (BasicTransformerBlock and most single-stream blocks).
_IMAGE_INDEX = {
    # (encoder_hidden_states, hidden_states)
    "JointTransformerBlock": 1,  # SD3 / SD3.5
    "FluxTransformerBlock": 1,
    "FluxSingleTransformerBlock": 1,  # diffusers >= 0.33 returns both streams separately
    "AuraFlowJointTransformerBlock": 1,
    "ChromaTransformerBlock": 1,
    "ChromaSingleTransformerBlock": 1,
    "QwenImageTransformerBlock": 1,
    # (hidden_states, encoder_hidden_states)
    "CogVideoXBlock": 0,
    "MochiTransformerBlock": 0,
    "CogView4TransformerBlock": 0,
    "HunyuanVideoTransformerBlock": 0,
    "HunyuanVideoSingleTransformerBlock": 0,
}


@dataclass(frozen=True)
class BlockSpec:
    """The ordered tappable block names of a backbone and the view mapping their outputs to
    ``(B, T, D)`` tokens (None when the blocks already return that)."""

    names: list[str]
    view: TokenView | None
    lists: tuple[str, ...]


class _StreamView:
    """Token view for blocks that return (a, b) tuples: the element holding the image stream."""

    def __init__(self, index: int, classes: Sequence[str]) -> None:
        self.index = index
        self.classes = tuple(classes)

    def __call__(self, output: Any) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            out = output[self.index]
        else:
            out = getattr(output, "sample", output)
        if not torch.is_tensor(out) or out.ndim != 3:
            raise ValueError(
                f"diffusers block output {type(out).__name__} "
                f"{tuple(getattr(out, 'shape', ()))} is not (B, T, D) tokens; pass "
                "blocks=[...] and view=... to LayerSync explicitly"
            )
        return out

    def __repr__(self) -> str:
        return f"image stream at index {self.index} of {', '.join(self.classes)} outputs"


def diffusers_blocks(model: nn.Module) -> BlockSpec:
    """The block spec of a diffusers transformer (``pipe.transformer``), wrapped or not.

    Raises ValueError naming the model when it has none of the known block lists, or mixes block
    classes whose outputs put the image stream at different positions.
    """
    inner = unwrap_model(model)
    present = [
        a for a in (*_DOUBLE, *_SINGLE) if isinstance(getattr(inner, a, None), nn.ModuleList)
    ]
    if not present:
        present = [a for a in _PLAIN if isinstance(getattr(inner, a, None), nn.ModuleList)]
    if not present or not any(len(getattr(inner, a)) for a in present):
        raise ValueError(
            f"{type(inner).__name__} has no diffusers block list "
            f"({', '.join((*_DOUBLE, *_SINGLE, *_PLAIN))}); pass blocks=[...] to LayerSync"
        )
    names: list[str] = []
    classes: dict[str, int | None] = {}
    for attr in present:
        for i, block in enumerate(getattr(inner, attr)):
            names.append(f"{attr}.{i}")
            classes[type(block).__name__] = _IMAGE_INDEX.get(type(block).__name__)
    indices = {i for i in classes.values() if i is not None}
    if len(indices) > 1:
        raise ValueError(
            f"{type(inner).__name__}: block classes {sorted(classes)} return the image stream at "
            "different tuple positions; pass view=... to LayerSync"
        )
    view = _StreamView(indices.pop(), list(classes)) if indices else None
    return BlockSpec(names=names, view=view, lists=tuple(present))
