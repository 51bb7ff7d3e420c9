"""A small SoundFont 2 reader and note renderer (mono, numpy).

Reads the RIFF ``sfbk`` layout: ``sdta/smpl`` (16-bit PCM) and the ``pdta`` hydra (phdr, pbag,
pgen, inst, ibag, igen, shdr). A note resolves preset zones -> instrument zones by key and
velocity range (global zones apply to every zone of their list); the generators used are: key /
velocity range, sample address offsets, root key override, coarse/fine tune, scale tuning,
sample loop mode, initial attenuation and the volume envelope (delay, attack, hold, decay,
sustain, release). Preset-level generators add to instrument-level ones (SF2 2.04, 9.4).
Filters, LFOs, modulators and pan are ignored: the renderer is for data, not for listening.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Generator operators (SF2 2.04, section 8.1.2) this renderer uses.
START_OFS, END_OFS, STARTLOOP_OFS, ENDLOOP_OFS = 0, 1, 2, 3
START_COARSE, END_COARSE, STARTLOOP_COARSE, ENDLOOP_COARSE = 4, 12, 45, 50
DELAY_VOL, ATTACK_VOL, HOLD_VOL, DECAY_VOL, SUSTAIN_VOL, RELEASE_VOL = 33, 34, 35, 36, 37, 38
INSTRUMENT, KEY_RANGE, VEL_RANGE, ATTENUATION = 41, 43, 44, 48
COARSE_TUNE, FINE_TUNE, SAMPLE_ID, SAMPLE_MODES, SCALE_TUNING, ROOT_KEY = 51, 52, 53, 54, 56, 58
RANGES = (KEY_RANGE, VEL_RANGE)
DEFAULTS = {
    DELAY_VOL: -12000,
    ATTACK_VOL: -12000,
    HOLD_VOL: -12000,
    DECAY_VOL: -12000,
    RELEASE_VOL: -12000,
    SCALE_TUNING: 100,
    ROOT_KEY: -1,
}


class SF2Error(ValueError):
    """A file that is not a readable SoundFont 2 (the message names the file)."""


@dataclass(frozen=True)
class Sample:
    name: str
    start: int
    end: int
    loop_start: int
    loop_end: int
    rate: int
    root: int
    correction: int  # cents


@dataclass(frozen=True)
class Zone:
    """Generators of one zone: ranges as (lo, hi), everything else as a signed amount."""

    gens: dict[int, int | tuple[int, int]] = field(default_factory=dict)

    def covers(self, key: int, vel: int) -> bool:
        klo, khi = self.gens.get(KEY_RANGE, (0, 127))
        vlo, vhi = self.gens.get(VEL_RANGE, (0, 127))
        return klo <= key <= khi and vlo <= vel <= vhi


@dataclass(frozen=True)
class Preset:
    name: str
    program: int
    bank: int
    zones: tuple[Zone, ...]  # global zone (if any) already merged into each


@dataclass(frozen=True)
class Voice:
    """One sample played for one note: the merged generators of an instrument + preset zone."""

    sample: Sample
    gens: dict[int, int]

    def get(self, op: int) -> int:
        return self.gens.get(op, DEFAULTS.get(op, 0))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _chunks(data: bytes, start: int, end: int, where: str) -> dict[str, tuple[int, int]]:
    """RIFF sub-chunks in data[start:end] -> {id (or LIST type): (offset, size)}."""
    out, pos = {}, start
    while pos + 8 <= end:
        cid, size = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if body + size > end:
            raise SF2Error(f"{where}: chunk {cid!r} runs past the end of the file")
        name = cid.decode("latin-1")
        if name == "LIST":
            name = data[body : body + 4].decode("latin-1")
            out[name] = (body + 4, size - 4)
        else:
            out[name] = (body, size)
        pos = body + size + (size & 1)
    return out


def _records(data: bytes, span: tuple[int, int], fmt: str, where: str, name: str) -> list:
    offset, size = span
    step = struct.calcsize(fmt)
    if size % step:
        raise SF2Error(f"{where}: pdta/{name} size {size} is not a multiple of {step}")
    return [struct.unpack_from(fmt, data, offset + i * step) for i in range(size // step)]


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


def _gens(records: list, lo: int, hi: int) -> dict[int, int | tuple[int, int]]:
    gens: dict[int, int | tuple[int, int]] = {}
    for oper, amount in records[lo:hi]:
        if oper in RANGES:
            gens[oper] = (amount & 0xFF, amount >> 8)
        else:
            gens[oper] = amount - 0x10000 if amount >= 0x8000 else amount
    return gens


def _zone_lists(bags: list, gens: list, first: list[int], global_key: int) -> list[list[Zone]]:
    """Zones of each header (bag ranges first[i]..first[i+1]); a first zone without the
    ``global_key`` generator is the global zone and is merged into the others."""
    out = []
    for i in range(len(first) - 1):
        zones = [
            _gens(gens, bags[b][0], bags[b + 1][0])
            for b in range(first[i], first[i + 1])
            if b + 1 < len(bags)
        ]
        if zones and global_key not in zones[0]:
            glob, zones = zones[0], zones[1:]
            zones = [{**glob, **z} for z in zones]
        out.append([Zone(z) for z in zones if global_key in z])
    return out


class SoundFont:
    """A parsed SF2 file: ``samples`` (int16 PCM, mono), presets by (bank, program)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        where = str(self.path)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise SF2Error(f"{where}: cannot read ({e.strerror or e})") from None
        if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"sfbk":
            raise SF2Error(f"{where}: not a SoundFont 2 file (no RIFF sfbk header)")
        top = _chunks(data, 12, len(data), where)
        for part in ("sdta", "pdta"):
            if part not in top:
                raise SF2Error(f"{where}: missing LIST {part}")
        sdta = _chunks(data, *_span_end(top["sdta"]), where)
        pdta = _chunks(data, *_span_end(top["pdta"]), where)
        for name in ("smpl",):
            if name not in sdta:
                raise SF2Error(f"{where}: missing sdta/{name}")
        for name in ("phdr", "pbag", "pgen", "inst", "ibag", "igen", "shdr"):
            if name not in pdta:
                raise SF2Error(f"{where}: missing pdta/{name}")
        off, size = sdta["smpl"]
        self.pcm = np.frombuffer(data, dtype="<i2", count=size // 2, offset=off)
        rec = lambda n, f: _records(data, pdta[n], f, where, n)  # noqa: E731
        phdr, inst = rec("phdr", "<20sHHHIII"), rec("inst", "<20sH")
        pbag, ibag = rec("pbag", "<HH"), rec("ibag", "<HH")
        pgen, igen = rec("pgen", "<HH"), rec("igen", "<HH")
        self.samples = [
            Sample(_name(n), s, e, ls, le, rate, root, corr)
            for n, s, e, ls, le, rate, root, corr, _, _ in rec("shdr", "<20sIIIIIBbHH")[:-1]
        ]
        self.instruments = _zone_lists(ibag, igen, [r[1] for r in inst], SAMPLE_ID)
        self.instrument_names = [_name(r[0]) for r in inst[:-1]]
        preset_zones = _zone_lists(pbag, pgen, [r[3] for r in phdr], INSTRUMENT)
        self.presets = {
            (bank, program): Preset(_name(n), program, bank, tuple(zones))
            for (n, program, bank, *_), zones in zip(phdr[:-1], preset_zones, strict=True)
        }
        for s in self.samples:
            if not (0 <= s.start <= s.end <= len(self.pcm)):
                raise SF2Error(f"{where}: sample {s.name!r} points outside the sample data")

    def voices(self, program: int, key: int, vel: int = 100, bank: int = 0) -> list[Voice]:
        """The voices that sound for ``key``/``vel`` on preset (``bank``, ``program``)."""
        preset = self.presets.get((bank, program))
        if preset is None:
            raise SF2Error(f"{self.path}: no preset bank {bank} program {program}")
        voices = []
        for pz in preset.zones:
            if not pz.covers(key, vel):
                continue
            inst = int(pz.gens[INSTRUMENT])
            if not 0 <= inst < len(self.instruments):
                raise SF2Error(f"{self.path}: preset {preset.name!r} names instrument {inst}")
            for iz in self.instruments[inst]:
                if not iz.covers(key, vel):
                    continue
                gens = {k: v for k, v in iz.gens.items() if k not in RANGES}
                for k, v in pz.gens.items():  # preset generators are offsets (SF2 9.4)
                    if k not in RANGES and k not in (INSTRUMENT, SAMPLE_ID):
                        gens[k] = gens.get(k, DEFAULTS.get(k, 0)) + v
                sid = int(gens[SAMPLE_ID])
                if not 0 <= sid < len(self.samples):
                    raise SF2Error(f"{self.path}: instrument {inst} names sample {sid}")
                voices.append(Voice(self.samples[sid], gens))
        return voices


def _span_end(span: tuple[int, int]) -> tuple[int, int]:
    return span[0], span[0] + span[1]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _seconds(timecents: int) -> float:
    return 0.0 if timecents <= -12000 else 2.0 ** (timecents / 1200.0)


def envelope(voice: Voice, n: int, note_off: int, rate: int) -> np.ndarray:
    """The volume envelope (linear gain) over ``n`` output samples, released at ``note_off``."""
    delay, attack, hold, decay, release = (
        int(_seconds(voice.get(op)) * rate)
        for op in (DELAY_VOL, ATTACK_VOL, HOLD_VOL, DECAY_VOL, RELEASE_VOL)
    )
    sustain_db = -min(max(voice.get(SUSTAIN_VOL), 0), 1440) / 10.0
    env_db = np.full(n, sustain_db)
    i = np.arange(n, dtype=np.float64)
    # decay: linear in dB from 0 to the sustain level; attack is linear in amplitude
    t0 = delay + attack + hold
    in_decay = i >= t0
    env_db[~in_decay] = 0.0
    if decay > 0:
        env_db[in_decay] = np.maximum(sustain_db, -100.0 * (i[in_decay] - t0) / decay)
    gain = 10.0 ** (env_db / 20.0)
    gain[: min(n, delay)] = 0.0
    if attack > 0:
        a = (i >= delay) & (i < delay + attack)
        gain[a] = (i[a] - delay) / attack
    if note_off < n:  # release: -100 dB over `release` samples from the level at note-off
        level = gain[note_off]
        k = i[note_off:] - note_off
        gain[note_off:] = level * 10.0 ** (-5.0 * k / max(release, 1))
    return gain


def render_voice(
    sf: SoundFont, voice: Voice, key: int, vel: int, duration: float, rate: int, tail: float
) -> np.ndarray:
    """One voice of a note held ``duration`` s, plus a ``tail`` s release, at ``rate`` Hz."""
    s, g = voice.sample, voice.get
    start = s.start + g(START_OFS) + 32768 * g(START_COARSE)
    end = s.end + g(END_OFS) + 32768 * g(END_COARSE)
    loop_start = s.loop_start + g(STARTLOOP_OFS) + 32768 * g(STARTLOOP_COARSE)
    loop_end = s.loop_end + g(ENDLOOP_OFS) + 32768 * g(ENDLOOP_COARSE)
    start, end = max(0, start), min(len(sf.pcm), end)
    pcm = sf.pcm[start:end].astype(np.float32) / 32768.0
    root = g(ROOT_KEY) if g(ROOT_KEY) >= 0 else s.root
    cents = (key - root) * g(SCALE_TUNING) + 100 * g(COARSE_TUNE) + g(FINE_TUNE) + s.correction
    step = 2.0 ** (cents / 1200.0) * s.rate / rate  # source samples per output sample
    n = round((duration + tail) * rate)
    pos = np.arange(n) * step
    looped = g(SAMPLE_MODES) & 1 and start <= loop_start < loop_end <= end
    if looped:
        ls, le = loop_start - start, loop_end - start
        over = pos >= ls
        pos[over] = ls + np.mod(pos[over] - ls, le - ls)
    else:
        pos = pos[pos < len(pcm) - 1]
    if len(pcm) < 2 or len(pos) == 0:
        return np.zeros(n, np.float32)
    i0 = np.minimum(pos.astype(np.int64), len(pcm) - 2)
    frac = (pos - i0).astype(np.float32)
    wave = pcm[i0] * (1 - frac) + pcm[i0 + 1] * frac
    wave = np.pad(wave, (0, n - len(wave)))
    atten_db = -max(g(ATTENUATION), 0) / 10.0 * 0.4  # FluidSynth's 0.4 cB scaling
    velocity_db = 40.0 * np.log10(max(vel, 1) / 127.0)  # the SF2 default velocity curve
    gain = 10.0 ** ((atten_db + velocity_db) / 20.0)
    env = envelope(voice, n, round(duration * rate), rate)
    return (wave * env * gain).astype(np.float32)


def render_note(
    sf: SoundFont,
    program: int,
    key: int,
    vel: int,
    duration: float,
    rate: int = 16000,
    bank: int = 0,
    tail: float = 0.3,
) -> np.ndarray:
    """All voices of one note, summed (mono), ``duration + tail`` seconds at ``rate`` Hz."""
    n = round((duration + tail) * rate)
    out = np.zeros(n, np.float32)
    for voice in sf.voices(program, key, vel, bank):
        out += render_voice(sf, voice, key, vel, duration, rate, tail)
    return out
