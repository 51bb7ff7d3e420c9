"""SiT for 1-D, 2-D and 3-D signals: (B, C, L) audio latents, (B, C, H, W) images, (B, C, F, H, W) video.

One model file in the DiT/SiT style. The 2-D case is the official SiT (willisma/SiT) parameter for
parameter and in the same init order: its checkpoints load with ``strict=True`` (the image plugin's
``SiT`` is this class with ``condition="class"``). LayerSync taps ``blocks.0 .. blocks.{depth-1}``,
each a (B, T, D) token sequence.

Conditions: ``"none"``; ``"class"`` (integer labels, a ``LabelEmbedder`` with a null row); or
``"tags"`` (float multi-hot (B, K), a :class:`TagEmbedder`; the zero vector is the null condition,
so ``layersync.flow.guided(null_cond=0.0)`` works unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from layersync.nn.layers import (
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    SiTBlock,
    TimestepEmbedder,
    init_sit_weights,
)
from layersync.nn.posembed import sincos_pos_embed

__all__ = ["SIT_SIZES", "SiT", "TagEmbedder", "patchify", "unpatchify"]

SIT_SIZES: dict[str, dict[str, int]] = {
    "S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
    "XL": {"depth": 28, "hidden_size": 1152, "num_heads": 16},
}
"""The SiT/DiT size table: depth, width and heads of S, B, L and XL (patch size is separate)."""

CONDITIONS = ("none", "class", "tags")


# -----------------------------------------------------------------------------
# Multi-hot tag condition


class TagEmbedder(nn.Module):
    """Multi-hot tags (B, K) float -> (B, D): one Linear without bias, so the all-zero vector (no
    tag, and the dropped condition) embeds to exactly zero, the null condition.

    In training the whole tag vector of a sample is zeroed with probability ``dropout_prob``
    (classifier-free guidance); ``force_drop_ids == 1`` zeroes it always.
    """

    def __init__(self, num_tags: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.proj = nn.Linear(num_tags, hidden_size, bias=False)
        self.num_tags = num_tags
        self.dropout_prob = dropout_prob

    def token_drop(
        self,
        tags: torch.Tensor,
        force_drop_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if force_drop_ids is None:
            draws = torch.rand(tags.shape[0], device=tags.device, generator=generator)
            drop = draws < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return tags * (~drop).to(tags.dtype).unsqueeze(1)

    def forward(
        self,
        tags: torch.Tensor,
        train: bool,
        force_drop_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if tags.ndim != 2 or tags.shape[1] != self.num_tags:
            raise ValueError(f"tags must be (B, {self.num_tags}), got {tuple(tags.shape)}")
        tags = tags.to(self.proj.weight.dtype)
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            tags = self.token_drop(tags, force_drop_ids, generator)
        return self.proj(tags)


# -----------------------------------------------------------------------------
# N-d patchify / unpatchify (each token laid out as (p_1, .., p_n, C))


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, C, *size) -> (B, T, prod(patch) * C), tokens row-major over the patch grid and each
    token's values ordered (p_1, .., p_n, C): the layout :func:`unpatchify` inverts."""
    n = len(patch_size)
    b, c, *size = x.shape
    grid = [s // p for s, p in zip(size, patch_size, strict=True)]
    x = x.reshape(b, c, *[v for g, p in zip(grid, patch_size, strict=True) for v in (g, p)])
    # (B, C, g1, p1, .., gn, pn) -> (B, g1..gn, p1..pn, C)
    perm = [0, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2), 1]
    return x.permute(perm).reshape(b, math.prod(grid), -1)


def unpatchify(
    x: torch.Tensor, grid_size: Sequence[int], patch_size: Sequence[int], channels: int
) -> torch.Tensor:
    """(B, T, prod(patch) * C) -> (B, C, *size). In 2-D this is DiT's 'nhwpqc->nchpwq'."""
    n = len(grid_size)
    b = x.shape[0]
    x = x.reshape(b, *grid_size, *patch_size, channels)
    # (B, g1..gn, p1..pn, C) -> (B, C, g1, p1, .., gn, pn)
    perm = [0, 2 * n + 1, *[v for i in range(n) for v in (1 + i, 1 + n + i)]]
    x = x.permute(perm)
    return x.reshape(b, channels, *[g * p for g, p in zip(grid_size, patch_size, strict=True)])


# -----------------------------------------------------------------------------
# Model


class SiT(nn.Module):
    """Scalable Interpolant Transformer over patchified (B, C, *input_size) signals.

    Args:
        input_size: ``(L,)``, ``(H, W)`` or ``(F, H, W)`` (an int is a square 2-D ``(s, s)``).
        patch_size: an int (every axis) or one per axis, e.g. ``(2, 4, 4)`` tubelets.
        condition: ``"none"``, ``"class"`` (``num_classes`` labels + a null row) or ``"tags"``
            (``num_tags`` multi-hot tags, zero = null).
        class_dropout_prob: training-time probability of dropping the condition (CFG).
        learn_sigma: predict 2C channels and return the first C (official SiT checkpoints).
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        patch_size: int | Sequence[int] = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        condition: str = "none",
        num_classes: int = 1000,
        num_tags: int = 0,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = False,
    ):
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.ndim = len(size)
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.condition = condition
        self.num_classes = num_classes if condition == "class" else 0
        self.num_tags = num_tags if condition == "tags" else 0
        self.learn_sigma = learn_sigma

        # registration order matters: it fixes the order of random draws at init (as official)
        self.x_embedder = PatchEmbed(size, patch_size, in_channels, hidden_size, ndim=self.ndim)
        self.input_size = self.x_embedder.input_size
        self.patch_size = self.x_embedder.patch_size
        self.grid_size = self.x_embedder.grid_size
        self.t_embedder = TimestepEmbedder(hidden_size)
        if condition == "class":
            self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        elif condition == "tags":
            self.y_embedder = TagEmbedder(num_tags, hidden_size, class_dropout_prob)
        else:
            self.y_embedder = None
        self.num_tokens = self.x_embedder.num_patches
        # fixed sin-cos positions over the token grid, frozen but saved (as in the checkpoints)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_tokens, hidden_size), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            [SiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official init (:func:`layersync.nn.init_sit_weights`) + the sin-cos ``pos_embed``."""
        init_sit_weights(self)
        pe = sincos_pos_embed(self.hidden_size, self.grid_size)
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(pe).float().unsqueeze(0))

    # the patch geometry is read from x_embedder (always tuples), so a subclass may keep int
    # ``input_size``/``patch_size`` attributes for its own users (the image plugin does)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *input_size) -> (B, T, prod(patch) * C), the layout ``unpatchify`` inverts."""
        return patchify(x, self.x_embedder.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, prod(patch) * out_channels) -> (B, out_channels, *input_size)."""
        emb = self.x_embedder
        return unpatchify(x, emb.grid_size, emb.patch_size, self.out_channels)

    def embed_condition(
        self,
        y: torch.Tensor | None,
        batch: int,
        force_drop_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | None:
        """The (B, D) condition vector added to the time embedding, or None (``"none"``)."""
        if self.y_embedder is None:
            if y is not None:
                raise ValueError("this SiT has condition='none' but was given a condition y")
            return None
        if y is None:
            raise ValueError(f"this SiT has condition={self.condition!r}: pass y")
        if y.shape[0] != batch:
            raise ValueError(f"condition y has {y.shape[0]} rows for a batch of {batch}")
        return self.y_embedder(y, self.training, force_drop_ids, generator)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        token_mask: torch.Tensor | None = None,
        force_drop_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x (B, C, *input_size), t (B,) in [0, 1] (1 = clean), y: (B,) int labels, (B, K) float
        tags, or None. ``token_mask`` (B, T) bool (True = valid) keeps padded tokens out of
        attention. Returns (B, C, *input_size) (with ``learn_sigma`` the extra C are dropped).
        In training mode the condition is dropped with ``class_dropout_prob`` (draws from
        ``generator``); ``force_drop_ids == 1`` forces the null condition."""
        size = self.x_embedder.input_size
        if tuple(x.shape[2:]) != size:
            raise ValueError(
                f"SiT expects input (B, {self.in_channels}, {', '.join(map(str, size))}), "
                f"got {tuple(x.shape)}"
            )
        h = self.x_embedder(x) + self.pos_embed  # (B, T, D)
        c = self.t_embedder(t)  # (B, D)
        cond = self.embed_condition(y, x.shape[0], force_drop_ids, generator)
        if cond is not None:
            c = c + cond
        attn_mask = None if token_mask is None else token_mask[:, None, None, :].bool()
        for block in self.blocks:
            h = block(h, c, attn_mask=attn_mask)  # (B, T, D): the tapped features
        h = self.final_layer(h, c)  # (B, T, prod(patch) * out_channels)
        out = self.unpatchify(h)  # (B, out_channels, *input_size)
        if self.learn_sigma:
            out, _ = out.chunk(2, dim=1)
        return out
