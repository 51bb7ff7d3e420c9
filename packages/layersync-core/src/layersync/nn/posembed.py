"""Fixed sine-cosine position embeddings for 1-D, 2-D and 3-D token grids.

The 2-D case is the MAE / DiT / SiT embedding, value for value and in the same token order, so
checkpoints trained with it (their frozen ``pos_embed``) are reproduced exactly.

Conventions (shared by every grid dimension):
- tokens are laid out row-major over the grid axes (axis 0 slowest, the last axis fastest), which
  is the order of ``Conv(stride=patch).flatten(2).transpose(1, 2)`` patch embeddings;
- the channels are split into one contiguous chunk per axis, and the chunks follow the axes in
  *reverse* order: the first chunk encodes the last (fastest) axis. For a 2-D grid (H, W) this is
  MAE's layout, whose first half of the channels encodes the column (w) coordinate;
- within a chunk of size d, position p gives ``[sin(p * w_k), cos(p * w_k)]`` for
  ``w_k = 1 / 10000 ** (k / (d / 2))``, k = 0 .. d/2 - 1 (all sines first, then all cosines).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["default_axis_dims", "sincos_1d_from_positions", "sincos_pos_embed"]


def sincos_1d_from_positions(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """Sin-cos embedding of arbitrary (possibly fractional) positions: returns (M, embed_dim)."""
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even for a sin-cos embedding, got {embed_dim}")
    half = embed_dim // 2
    omega = np.arange(half, dtype=np.float64) / half
    omega = 1.0 / 10000**omega  # (half,)
    pos = np.asarray(positions).reshape(-1)  # (M,)
    angles = np.einsum("m,d->md", pos, omega)  # outer product, float64
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def default_axis_dims(embed_dim: int, num_axes: int) -> tuple[int, ...]:
    """Split ``embed_dim`` into ``num_axes`` even chunks, as equal as possible.

    Chunks are listed in channel order (the first chunk encodes the last grid axis). Leftover
    pairs of channels go to the first chunks: 64 channels over 3 axes give (22, 22, 20).
    """
    if num_axes < 1:
        raise ValueError(f"num_axes must be >= 1, got {num_axes}")
    if embed_dim % 2 != 0 or embed_dim < 2 * num_axes:
        raise ValueError(
            f"embed_dim={embed_dim} cannot be split into {num_axes} non-empty even chunks"
        )
    pairs, extra = divmod(embed_dim // 2, num_axes)
    return tuple(2 * (pairs + (1 if i < extra else 0)) for i in range(num_axes))


def sincos_pos_embed(
    embed_dim: int,
    grid_size: int | Sequence[int],
    axis_dims: Sequence[int] | None = None,
) -> np.ndarray:
    """Fixed sin-cos position embedding of a token grid.

    Args:
        embed_dim: channels per token.
        grid_size: an int (a 2-D square grid, like MAE's ``get_2d_sincos_pos_embed``) or a tuple
            of 1, 2 or 3 axis lengths, e.g. ``(L,)``, ``(H, W)``, ``(T, H, W)``.
        axis_dims: channels per chunk in channel order (chunk i encodes axis ``-1 - i``); each must
            be even and they must sum to ``embed_dim``. Default: equal halves for 2-D (MAE), and
            :func:`default_axis_dims` otherwise.

    Returns:
        A float64 numpy array of shape ``(prod(grid_size), embed_dim)``, tokens row-major over the
        grid. Convert with ``torch.from_numpy(pe).float()`` (as DiT/SiT do).
    """
    sizes = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if not 1 <= len(sizes) <= 3 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"grid_size must be an int or 1 to 3 positive lengths, got {grid_size}")
    if axis_dims is None:
        axis_dims = default_axis_dims(embed_dim, len(sizes))
    axis_dims = tuple(int(d) for d in axis_dims)
    if len(axis_dims) != len(sizes) or sum(axis_dims) != embed_dim:
        raise ValueError(
            f"axis_dims {axis_dims} must have one entry per axis and sum to {embed_dim}"
        )
    if any(d <= 0 or d % 2 for d in axis_dims):
        raise ValueError(
            f"every entry of axis_dims must be a positive even number, got {axis_dims}"
        )

    # coords[a] holds, for every token in row-major order, its coordinate along axis a.
    axes = [np.arange(s, dtype=np.float32) for s in sizes]
    coords = np.meshgrid(*axes, indexing="ij")
    chunks = [
        sincos_1d_from_positions(dim, coords[len(sizes) - 1 - i]) for i, dim in enumerate(axis_dims)
    ]
    return np.concatenate(chunks, axis=1)
