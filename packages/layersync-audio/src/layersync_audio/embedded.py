"""The embedded default data: 2-s phrases of 8 instrument families rendered from an SF2 file.

The General-MIDI sound font ``TimGM6mb.sf2`` ships inside the ``pretty-midi`` wheel (GPL-2: it is
read from the installed package at run time, never copied here). Each clip is a short phrase (a
melody with some chords, or a drum pattern) whose notes, tempo, scale, register, velocities and
program are drawn from ``SeedSequence([seed, split, family, index])``: the same clips on every
machine. Train and eval clips come from different seed streams of the same programs.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from layersync.train.data import SeededDataset
from layersync_audio.sf2 import SoundFont, render_note

SF2_MODULE, SF2_FILE, SF2_DIST = "pretty_midi", "TimGM6mb.sf2", "pretty-midi"

# (bank, programs, lowest key, highest key, chord probability) per family; General MIDI numbers.
FAMILIES: dict[str, tuple[int, tuple[int, ...], int, int, float]] = {
    "piano": (0, (0, 1, 2, 3, 4, 5), 45, 84, 0.4),
    "organ": (0, (16, 17, 18, 19, 20), 48, 79, 0.5),
    "guitar": (0, (24, 25, 26, 27, 28, 29, 30), 45, 76, 0.3),
    "bass": (0, (32, 33, 34, 35, 36, 37, 38, 39), 28, 52, 0.0),
    "strings": (0, (40, 41, 42, 43, 44, 48, 49, 50), 50, 86, 0.4),
    "brass": (0, (56, 57, 58, 59, 60, 61, 62, 63), 50, 79, 0.0),
    "reed-pipe": (0, tuple(range(64, 80)), 55, 86, 0.0),
    "drums": (128, (0, 8, 16, 24, 25, 32, 40, 48), 35, 81, 0.0),
}
SPLITS = {"train": 0, "eval": 1}
SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9), (0, 3, 5, 7, 10))
# GM drum keys: kick, snare, closed / open hi-hat, toms, crash, ride
KICK, SNARE, HATS, TOMS, CYMBALS = (35, 36), (38, 40), (42, 44, 46), (41, 43, 45, 47, 48), (49, 51)


def default_sf2() -> Path:
    """``TimGM6mb.sf2`` inside the installed ``pretty-midi`` (one-line install hint if absent)."""
    from layersync.assets import package_file

    return package_file(SF2_MODULE, SF2_FILE, dist=SF2_DIST)


@lru_cache(maxsize=2)
def load_soundfont(path: str) -> SoundFont:
    return SoundFont(path)


# --------------------------------------------------------------------------------------------
# Phrases
# --------------------------------------------------------------------------------------------


def _melody(rng: np.random.Generator, lo: int, hi: int, chords: float, seconds: float):
    """Notes (onset s, duration s, keys, velocity) of a scale-bound random walk."""
    beat = 60.0 / rng.uniform(80, 150)
    scale = SCALES[rng.integers(len(SCALES))]
    tonic = int(rng.integers(12))
    keys = [k for k in range(lo, hi + 1) if (k - tonic) % 12 in scale]
    pos = int(rng.integers(len(keys) // 4, 3 * len(keys) // 4 + 1))
    notes, t = [], float(rng.choice([0.0, beat / 2]))
    while t < seconds - 0.1:
        dur = beat * float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
        pos = int(np.clip(pos + rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3]), 0, len(keys) - 1))
        stack = [keys[pos]]
        if rng.random() < chords:
            stack += [keys[p] for p in (pos - 2, pos - 4) if p >= 0]
        if rng.random() > 0.1:  # a few rests
            notes.append((t, dur * 0.95, stack, int(rng.integers(70, 121))))
        t += dur
    return notes


def _drums(rng: np.random.Generator, seconds: float):
    """A 16th-note pattern: kick/snare backbeat with variations, hats, fills and a crash."""
    step = 60.0 / rng.uniform(85, 150) / 4
    kick, snare = int(rng.choice(KICK)), int(rng.choice(SNARE))
    hat = int(rng.choice(HATS[:2]))
    notes = []
    if rng.random() < 0.4:
        notes.append((0.0, 0.5, [int(rng.choice(CYMBALS))], 110))
    for i in range(int(seconds / step)):
        t, beat16 = i * step, i % 16
        hits = []
        if beat16 in (0, 8) or (beat16 in (6, 10, 14) and rng.random() < 0.3):
            hits.append(kick)
        if beat16 in (4, 12) or (rng.random() < 0.08):
            hits.append(snare)
        if i % 2 == 0 or rng.random() < 0.25:
            hits.append(hat if rng.random() > 0.1 else HATS[2])
        if beat16 >= 12 and rng.random() < 0.2:
            hits.append(int(rng.choice(TOMS)))
        if hits:
            notes.append((t, step, hits, int(rng.integers(60, 121))))
    return notes


def render_phrase(
    sf: SoundFont, family: str, rng: np.random.Generator, seconds: float = 2.0, rate: int = 16000
) -> tuple[np.ndarray, int]:
    """One clip of ``family`` (float32 mono, peak 0.5..0.9) and the program it was played on."""
    bank, programs, lo, hi, chords = FAMILIES[family]
    program = int(rng.choice(programs))
    notes = _drums(rng, seconds) if family == "drums" else _melody(rng, lo, hi, chords, seconds)
    n = round(seconds * rate)
    out = np.zeros(n, np.float32)
    for onset, dur, keys, vel in notes:
        for key in keys:
            start = round(onset * rate)
            wave = render_note(sf, program, key, vel, dur, rate, bank=bank, tail=0.3)
            stop = min(n, start + len(wave))
            out[start:stop] += wave[: stop - start]
    peak = float(np.abs(out).max())
    if peak > 0:
        out *= rng.uniform(0.5, 0.9) / peak
    return out, program


def clip_rng(seed: int, split: str, family: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], family, index]))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class EmbeddedAudio(SeededDataset):
    """``per_family`` clips of each of the 8 families for ``split``: items ``(wave (N,), label)``.

    The clips are fixed (rendered from ``data_seed``); the whole split is rendered once and kept
    in memory (``cache``: also as an ``.npy`` under the layersync cache, keyed by the sound
    font's size and the arguments). ``seed`` is the SeededDataset seed (unused: no random draws).
    """

    classes = list(FAMILIES)
    num_classes = len(FAMILIES)

    def __init__(
        self,
        split: str = "train",
        per_family: int = 64,
        seconds: float = 2.0,
        sample_rate: int = 16000,
        data_seed: int = 0,
        sf2: str | Path | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__(None)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split, self.per_family = split, int(per_family)
        self.seconds, self.sample_rate, self.data_seed = seconds, int(sample_rate), data_seed
        self.sf2 = Path(sf2) if sf2 is not None else default_sf2()
        key = f"{self.sf2.stat().st_size}-{split}-{per_family}-{seconds}-{sample_rate}-{data_seed}"
        self.waves = self._load(key, cache)
        self.labels = np.repeat(np.arange(self.num_classes), self.per_family)

    def _render(self) -> np.ndarray:
        sf = load_soundfont(str(self.sf2))
        waves = [
            render_phrase(
                sf, fam, clip_rng(self.data_seed, self.split, f, i), self.seconds, self.sample_rate
            )[0]
            for f, fam in enumerate(FAMILIES)
            for i in range(self.per_family)
        ]
        return np.stack(waves)

    def _load(self, key: str, cache: bool) -> np.ndarray:
        if not cache:
            return self._render()
        from layersync.fileio import atomic_path, cache_dir

        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = cache_dir("audio", "embedded") / f"{digest}.npy"
        if path.is_file():
            try:
                return np.load(path)
            except (OSError, ValueError):
                pass  # a damaged cache file is rendered again
        waves = self._render()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, waves)
        return waves

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.waves[index]), torch.tensor(int(self.labels[index]))

    def __repr__(self) -> str:
        return f"EmbeddedAudio({self.split!r}, n={len(self)}, {self.seconds} s, {self.sf2.name})"
