"""Shared transformer parts (DiT/SiT blocks, adaLN, embedders, sin-cos position embeddings)."""

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

__all__ = [
    "Attention",
    "DiTBlock",
    "FinalLayer",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "SiTBlock",
    "TimestepEmbedder",
    "default_axis_dims",
    "init_sit_weights",
    "modulate",
    "sincos_1d_from_positions",
    "sincos_pos_embed",
]
