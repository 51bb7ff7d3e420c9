"""Shared fixtures of the audio plugin's tests: a tiny SoundFont writer, one-thread torch."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: keep every test on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _chunk(cid: bytes, body: bytes) -> bytes:
    return struct.pack("<4sI", cid, len(body)) + body + (b"\0" if len(body) & 1 else b"")


def _list(kind: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", kind + b"".join(chunks))


def _name(text: str) -> bytes:
    return text.encode()[:19].ljust(20, b"\0")


def write_sf2(
    path: Path,
    samples: list[dict],
    instruments: list[dict],
    presets: list[dict],
) -> Path:
    """Write a minimal SF2 file.

    samples: {"name", "pcm" (int16 array), "rate", "root", "correction", "loop": (start, end)
    relative to the sample}; instruments: {"name", "zones": [{op: amount | (lo, hi)}]}; presets:
    {"name", "program", "bank", "zones": [{op: amount | (lo, hi)}]}. Generators are written in
    the given order; ranges are (lo, hi) tuples.
    """
    pcm, shdr = b"", b""
    pos = 0
    for s in samples:
        data = np.asarray(s["pcm"], dtype="<i2")
        ls, le = s.get("loop", (0, 0))
        shdr += struct.pack(
            "<20sIIIIIBbHH",
            _name(s["name"]),
            pos,
            pos + len(data),
            pos + ls,
            pos + le,
            s["rate"],
            s["root"],
            s.get("correction", 0),
            0,
            1,
        )
        pcm += data.tobytes() + b"\0" * 92  # 46 zero samples after each sample (SF2 rule)
        pos += len(data) + 46
    shdr += struct.pack("<20sIIIIIBbHH", _name("EOS"), 0, 0, 0, 0, 0, 0, 0, 0, 0)

    def gens_bags(zone_lists):
        gens, bags, firsts = b"", b"", []
        ngen = nbag = 0
        for zones in zone_lists:
            firsts.append(nbag)
            for zone in zones:
                bags += struct.pack("<HH", ngen, 0)
                nbag += 1
                for op, amount in zone.items():
                    if isinstance(amount, tuple):
                        raw = amount[0] | (amount[1] << 8)
                    else:
                        raw = amount & 0xFFFF
                    gens += struct.pack("<HH", op, raw)
                    ngen += 1
        firsts.append(nbag)
        bags += struct.pack("<HH", ngen, 0)
        gens += struct.pack("<HH", 0, 0)
        return gens, bags, firsts

    igen, ibag, ifirst = gens_bags([i["zones"] for i in instruments])
    inst = b"".join(
        struct.pack("<20sH", _name(i["name"]), f)
        for i, f in zip(instruments, ifirst[:-1], strict=True)
    )
    inst += struct.pack("<20sH", _name("EOI"), ifirst[-1])
    pgen, pbag, pfirst = gens_bags([p["zones"] for p in presets])
    phdr = b"".join(
        struct.pack("<20sHHHIII", _name(p["name"]), p["program"], p.get("bank", 0), f, 0, 0, 0)
        for p, f in zip(presets, pfirst[:-1], strict=True)
    )
    phdr += struct.pack("<20sHHHIII", _name("EOP"), 0, 0, pfirst[-1], 0, 0, 0)
    mod = struct.pack("<HHhHH", 0, 0, 0, 0, 0)
    body = b"sfbk" + _list(b"INFO", _chunk(b"ifil", struct.pack("<HH", 2, 1)))
    body += _list(b"sdta", _chunk(b"smpl", pcm))
    body += _list(
        b"pdta",
        _chunk(b"phdr", phdr),
        _chunk(b"pbag", pbag),
        _chunk(b"pmod", mod),
        _chunk(b"pgen", pgen),
        _chunk(b"inst", inst),
        _chunk(b"ibag", ibag),
        _chunk(b"imod", mod),
        _chunk(b"igen", igen),
        _chunk(b"shdr", shdr),
    )
    path.write_bytes(_chunk(b"RIFF", body))
    return path


def sine_pcm(freq: float, rate: int, periods: int, amp: float = 0.5) -> np.ndarray:
    n = round(periods * rate / freq)
    return (amp * 32767 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


@pytest.fixture(scope="session")
def sf2_writer():
    """``write_sf2(path, samples, instruments, presets)`` (see its docstring)."""
    return write_sf2


@pytest.fixture(scope="session")
def tiny_sf2(tmp_path_factory) -> Path:
    """Two sines (500 Hz root 60 and 1000 Hz root 72 at 16 kHz, looped over whole periods) in
    one instrument split at key 66, preset 0 with a global zone (attenuation 0, coarse tune 0);
    a drum kit (bank 128) of one noise burst; a melodic preset 1 without a loop."""
    rate = 16000
    lo, hi = sine_pcm(500, rate, 200), sine_pcm(1000, rate, 400)
    noise = (np.random.default_rng(0).standard_normal(1600) * 8000).astype(np.int16)
    samples = [
        {"name": "sine500", "pcm": lo, "rate": rate, "root": 60, "loop": (320, 3200)},
        {"name": "sine1000", "pcm": hi, "rate": rate, "root": 72, "loop": (320, 6400)},
        {"name": "noise", "pcm": noise, "rate": rate, "root": 60},
    ]
    instruments = [
        {
            "name": "Sines",
            "zones": [
                {37: 0},  # global zone: sustain 0 cB
                {43: (0, 66), 54: 1, 53: 0},
                {43: (67, 127), 54: 1, 53: 1},
            ],
        },
        {"name": "Noise", "zones": [{43: (30, 50), 38: -1200, 53: 2}]},
        {"name": "OneShot", "zones": [{53: 0}]},
    ]
    presets = [
        {"name": "SinePreset", "program": 0, "zones": [{48: 0}, {41: 0}]},
        {"name": "Kit", "program": 0, "bank": 128, "zones": [{41: 1}]},
        {"name": "OneShot", "program": 1, "zones": [{41: 2}]},
    ]
    return write_sf2(tmp_path_factory.mktemp("sf2") / "tiny.sf2", samples, instruments, presets)
