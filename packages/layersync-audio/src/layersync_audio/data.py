"""Real audio data: folders of clips (optional class sub-folders) and MTG-Jamendo TSV splits.

Every item is ``(wave (N,), condition)``: a mono float32 clip of ``seconds`` at ``sample_rate``
(a random crop drawn from the item's seeded generator; shorter files are padded with silence at
the end) and an int64 class index (folders) or a float multi-hot tag vector (Jamendo).
Files are decoded with soundfile (wav/flac/ogg, mp3 with libsndfile >= 1.1) and resampled with
``torchaudio.functional.resample``. An undecodable file raises ``AudioError`` naming it
(``on_error="error"``) or is skipped and counted (``"skip"``: the next readable item is used).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from layersync.train.data import SeededDataset

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
TAG_CATEGORIES = ("genre", "instrument", "mood/theme")
OnError = Literal["error", "skip"]


class AudioError(OSError):
    """An audio file that cannot be decoded, or a data file that names a missing clip."""


def read_audio(
    path: str | os.PathLike, sample_rate: int, channels: int | None = None
) -> torch.Tensor:
    """A file -> mono float32 ``(N,)`` at ``sample_rate`` (channels averaged); with
    ``channels`` (a VAE's ``audio_channels``) ``(channels, N)``: mono files are repeated, stereo
    files mixed down for ``channels=1``, other mismatches raise ``AudioError``."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"{path}: cannot decode audio ({e})") from None
    if data.size == 0:
        raise AudioError(f"{path}: cannot decode audio (no samples)")
    if channels is None:
        wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    elif data.shape[1] == channels or data.shape[1] == 1 or channels == 1:
        data = data.mean(axis=1, keepdims=True) if channels == 1 else data
        wave = torch.from_numpy(np.ascontiguousarray(data.T)).expand(channels, -1).contiguous()
    else:
        raise AudioError(f"{path}: has {data.shape[1]} channels, the VAE takes {channels}")
    if rate != sample_rate:
        import torchaudio

        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


def crop_or_pad(wave: torch.Tensor, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random ``length``-sample window of ``wave``; a shorter clip padded with silence."""
    if len(wave) <= length:
        return torch.nn.functional.pad(wave, (0, length - len(wave)))
    start = int(torch.randint(len(wave) - length + 1, (1,), generator=generator))
    return wave[start : start + length]


class _AudioFiles(SeededDataset):
    """Shared item logic: ``self.files`` (paths) + ``self.targets``, crops, skip-on-error."""

    files: list[Path]

    def __init__(self, seconds: float, sample_rate: int, on_error: OnError, seed: int | None):
        super().__init__(seed)
        if on_error not in ("error", "skip"):
            raise ValueError(f"data.on_error must be 'error' or 'skip', got {on_error!r}")
        self.seconds, self.sample_rate, self.on_error = seconds, int(sample_rate), on_error
        self.length = round(seconds * sample_rate)
        self.bad_files: set[Path] = set()

    @property
    def skipped(self) -> int:
        """How many distinct undecodable files were met (and skipped) so far."""
        return len(self.bad_files)

    def target(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.files)
        index = range(n)[index]
        for k in range(n):
            i = (index + k) % n
            if self.files[i] in self.bad_files:
                continue
            try:
                wave = read_audio(self.files[i], self.sample_rate)
                break
            except AudioError as e:
                if self.on_error == "error":
                    raise
                self.bad_files.add(self.files[i])
                warnings.warn(f"skipped ({self.skipped} so far): {e}", stacklevel=2)
        else:
            raise AudioError(f"no decodable audio file among the {n} of {self}")
        return crop_or_pad(wave, self.length, self.generator(index)), self.target(i)


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def _audio_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


class AudioFolder(_AudioFiles):
    """``root/<class>/**/<clip>`` (classes sorted by name) or ``root/**/<clip>`` (one class)."""

    def __init__(
        self,
        root: str | os.PathLike,
        seconds: float,
        sample_rate: int = 16000,
        *,
        on_error: OnError = "error",
        seed: int | None = None,
    ) -> None:
        super().__init__(seconds, sample_rate, on_error, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.path: audio folder not found: {self.root}")
        subdirs = sorted(
            d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        loose = [p for p in self.root.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS]
        self.classes = [d.name for d in subdirs if _audio_files(d)] if not loose else []
        if self.classes:
            pairs = [
                (p, c)
                for c, name in enumerate(self.classes)
                for p in _audio_files(self.root / name)
            ]
        else:
            self.classes = [self.root.name]
            pairs = [(p, 0) for p in _audio_files(self.root)]
        if not pairs:
            raise FileNotFoundError(
                f"data.path: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {self.root}"
            )
        self.files = [p for p, _ in pairs]
        self.labels = [c for _, c in pairs]
        self.num_classes = len(self.classes)

    def target(self, index: int) -> torch.Tensor:
        return torch.tensor(self.labels[index])

    def __repr__(self) -> str:
        return f"AudioFolder({str(self.root)!r}, n={len(self)}, classes={self.num_classes})"


# --------------------------------------------------------------------------------------------
# MTG-Jamendo
# --------------------------------------------------------------------------------------------


def read_jamendo_tsv(
    tsv: str | os.PathLike, categories: tuple[str, ...]
) -> list[tuple[int, str, list[str]]]:
    """Rows ``TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS...`` -> (line, path, tags), tags
    (``genre---rock``) kept when their category is in ``categories``."""
    for c in categories:
        if c not in TAG_CATEGORIES:
            raise ValueError(
                f"data.tag_categories: unknown category {c!r} (choices: {', '.join(TAG_CATEGORIES)})"
            )
    path = Path(tsv)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = list(csv.reader(fh, delimiter="\t"))
    except OSError as e:
        raise AudioError(f"{path}: cannot read ({e.strerror or e})") from None
    rows = []
    for line, fields in enumerate(lines, start=1):
        if not fields or fields[0] == "TRACK_ID":
            continue
        if len(fields) < 5:
            raise AudioError(
                f"{path}, line {line}: expected TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS..."
            )
        tags = [t for t in fields[5:] if t.split("---", 1)[0] in categories]
        rows.append((line, fields[3], tags))
    if not rows:
        raise AudioError(f"{path}: no tracks")
    return rows


class JamendoDataset(_AudioFiles):
    """One MTG-Jamendo split: audio at ``root/<PATH>``, targets multi-hot over ``vocabulary``
    (default: the sorted tags of this TSV in ``categories``; pass the train split's for eval).

    A row whose file is missing raises ``AudioError`` naming the TSV, the row and the file
    (``on_error="error"``) or is dropped and counted in ``missing`` (``"skip"``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        tsv: str | os.PathLike,
        seconds: float,
        sample_rate: int = 16000,
        *,
        categories: tuple[str, ...] = ("genre", "instrument"),
        vocabulary: list[str] | None = None,
        on_error: OnError = "error",
        seed: int | None = None,
    ) -> None:
        super().__init__(seconds, sample_rate, on_error, seed)
        self.root, self.tsv = Path(root), Path(tsv)
        rows = read_jamendo_tsv(self.tsv, tuple(categories))
        self.missing: list[tuple[int, Path]] = []
        kept = []
        for line, rel, tags in rows:
            file = self.root / rel
            if file.is_file():
                kept.append((file, tags))
            elif on_error == "error":
                raise AudioError(f"{self.tsv}, line {line}: audio file not found: {file}")
            else:
                self.missing.append((line, file))
        if self.missing:
            line, file = self.missing[0]
            warnings.warn(
                f"{self.tsv}: skipped {len(self.missing)} rows whose audio file is missing "
                f"(first: line {line}, {file})",
                stacklevel=2,
            )
        if not kept:
            raise AudioError(
                f"{self.tsv}: none of the {len(rows)} audio files exist under {self.root}"
            )
        self.vocabulary = vocabulary or sorted({t for _, tags in kept for t in tags})
        index = {t: i for i, t in enumerate(self.vocabulary)}
        self.files = [f for f, _ in kept]
        self.tags = [[index[t] for t in tags if t in index] for _, tags in kept]
        self.num_tags = len(self.vocabulary)

    def target(self, index: int) -> torch.Tensor:
        hot = torch.zeros(self.num_tags)
        hot[self.tags[index]] = 1.0
        return hot

    def __repr__(self) -> str:
        return f"JamendoDataset({str(self.tsv)!r}, n={len(self)}, tags={self.num_tags})"
