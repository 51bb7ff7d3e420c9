"""The 3 fixed clips of the musicnn equality fixture (numpy only: the fixture script imports it
in a TensorFlow venv). 16 kHz mono float32: a decaying A-minor chord (3.0 s), kick + noise
bursts (3.6 s, a drum-like loop) and a rising chirp over quiet noise (6.0 s, two patches)."""

from __future__ import annotations

import numpy as np

RATE = 16000


def lcg_noise(n: int, seed: int) -> np.ndarray:
    """Uniform noise in [-1, 1) from a 31-bit LCG (the same on every numpy version)."""
    out = np.empty(n)
    x = seed
    for i in range(n):
        x = (1103515245 * x + 12345) % 2**31
        out[i] = x / 2**30 - 1.0
    return out


def clips() -> list[np.ndarray]:
    t0 = np.arange(int(3.0 * RATE)) / RATE
    chord = sum(np.sin(2 * np.pi * f * t0) for f in (220.0, 261.63, 329.63, 440.0))
    chord = 0.2 * chord * np.exp(-1.5 * (t0 % 1.0))
    t1 = np.arange(int(3.6 * RATE)) / RATE
    beat = t1 % 0.3
    kick = np.sin(2 * np.pi * 55.0 * t1) * np.exp(-25.0 * beat)
    hats = lcg_noise(len(t1), 7) * np.exp(-60.0 * ((t1 + 0.15) % 0.3))
    drums = 0.6 * kick + 0.3 * hats
    t2 = np.arange(int(6.0 * RATE)) / RATE
    chirp = 0.3 * np.sin(2 * np.pi * (100.0 * t2 + 0.5 * 600.0 * t2**2))
    chirp += 0.02 * lcg_noise(len(t2), 11)
    return [c.astype(np.float32) for c in (chord, drums, chirp)]
