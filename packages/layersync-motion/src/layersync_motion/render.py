"""Stick figures: joints (T, J, 3) -> uint8 frames (T, H, W, 3), and GIF grids of clips.

A fixed three-quarter orthographic view (camera turned 30° about Y, tilted 15° down), the root
re-centred in XZ every frame so the figure stays in view; the trajectory shows as the moving
floor grid. Left limbs blue, right limbs red, spine and head black (kinematic chains of the
skeleton). Drawn with Pillow; written with ``layersync.media``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .skeleton import SkeletonSpec

CHAIN_COLOURS = [(200, 40, 40), (40, 80, 200), (20, 20, 20), (200, 40, 40), (40, 80, 200)]
"""T2M chain order: right leg, left leg, spine/head, right arm, left arm."""


def _view(yaw_deg: float = 30.0, pitch_deg: float = 15.0) -> np.ndarray:
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return rx @ ry


def render_clip(
    spec: SkeletonSpec, joints: np.ndarray, size: int = 128, extent: float = 2.2, title_rgb=None
) -> np.ndarray:
    """(T, J, 3) metres, y up -> (T, size, size, 3) uint8 stick-figure frames."""
    from PIL import Image, ImageDraw

    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (spec.num_joints, 3):
        raise ValueError(f"joints must be (T, {spec.num_joints}, 3), got {joints.shape}")
    view = _view()
    scale = size / extent
    frames = np.empty((len(joints), size, size, 3), np.uint8)
    colours = (
        CHAIN_COLOURS
        if len(spec.chains) == len(CHAIN_COLOURS)
        else [(20, 20, 20)] * len(spec.chains)
    )
    for t, pose in enumerate(joints):
        root = pose[0] * np.array([1.0, 0.0, 1.0])
        centred = pose - root

        def px(p):
            q = view @ p
            return (size / 2 + q[0] * scale, size * 0.85 - q[1] * scale)

        img = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        # floor grid, moving with the root so the trajectory is visible
        step = 0.5
        for k in range(-4, 5):
            for axis in (0, 2):
                a, b = np.zeros(3), np.zeros(3)
                off = k * step - (root[axis] % step)
                a[axis] = b[axis] = off
                other = 2 - axis
                a[other], b[other] = -2.0, 2.0
                draw.line([px(a), px(b)], fill=(225, 225, 225), width=1)
        for chain, colour in zip(spec.chains, colours, strict=True):
            pts = [px(centred[j]) for j in chain]
            draw.line(pts, fill=colour, width=max(2, size // 48), joint="curve")
        head = px(centred[spec.chains[2][-1]]) if len(spec.chains) > 2 else px(centred[0])
        r = max(2, size // 32)
        draw.ellipse(
            [head[0] - r, head[1] - r, head[0] + r, head[1] + r], outline=(20, 20, 20), width=2
        )
        frames[t] = np.asarray(img)
    return frames


def write_grid_gif(
    path: Path,
    spec: SkeletonSpec,
    clips: Sequence[np.ndarray],
    fps: float,
    nrow: int = 4,
    size: int = 128,
) -> Path:
    """Several joint clips as one GIF grid (shorter clips hold their last frame)."""
    from layersync.media import save_gif, tile_clips

    length = max(len(c) for c in clips)
    rendered = []
    for c in clips:
        frames = render_clip(spec, c, size)
        if len(frames) < length:
            frames = np.concatenate([frames, np.repeat(frames[-1:], length - len(frames), 0)])
        rendered.append(frames)
    return save_gif(path, tile_clips(np.stack(rendered), nrow=nrow, pad=2, pad_value=160), fps)
