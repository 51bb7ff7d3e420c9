"""Shared transformer parts (DiT/SiT blocks, adaLN, embedders, sin-cos position embeddings) and
the N-d SiT backbone (1-D audio, 2-D image, 3-D video) with its size table."""

from layersync.nn.layers import (
    Attention,
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    SiTBlock,
    TimestepEmbedder,
    init_sit_weights,
    modulate,
)
from layersync.nn.posembed import default_axis_dims, sincos_1d_from_positions, sincos_pos_embed
from layersync.nn.sit import SIT_SIZES, SiT, TagEmbedder, patchify, unpatchify

__all__ = [
    "SIT_SIZES",
    "Attention",
    "DiTBlock",
    "FinalLayer",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "SiT",
    "SiTBlock",
    "TagEmbedder",
    "TimestepEmbedder",
    "default_axis_dims",
    "init_sit_weights",
    "modulate",
    "patchify",
    "sincos_1d_from_positions",
    "sincos_pos_embed",
    "unpatchify",
]
