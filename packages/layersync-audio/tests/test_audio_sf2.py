"""SF2 reader and renderer, on a tiny SoundFont written by the test (conftest.write_sf2)."""

from __future__ import annotations

import numpy as np
import pytest

from layersync_audio.sf2 import SF2Error, SoundFont, render_note

RATE = 16000


def peak_hz(wave: np.ndarray, rate: int = RATE) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * rate / len(wave))


def test_reads_headers_zones_and_global_zone(tiny_sf2):
    sf = SoundFont(tiny_sf2)
    assert [s.name for s in sf.samples] == ["sine500", "sine1000", "noise"]
    assert sf.samples[0].rate == RATE and sf.samples[1].root == 72
    assert sf.samples[0].loop_end - sf.samples[0].loop_start == 2880
    assert set(sf.presets) == {(0, 0), (128, 0), (0, 1)}
    assert sf.presets[(128, 0)].name == "Kit"
    # the global zone (sustain 0) is merged into both sine zones and is not a zone itself
    assert len(sf.instruments[0]) == 2
    assert all(z.gens[37] == 0 for z in sf.instruments[0])
    # key 60 -> the low sine, key 70 -> the high sine; velocity does not matter here
    assert [v.sample.name for v in sf.voices(0, 60)] == ["sine500"]
    assert [v.sample.name for v in sf.voices(0, 70, vel=1)] == ["sine1000"]
    assert sf.voices(0, 60, bank=128) == []  # kit covers keys 30..50 only
    assert [v.sample.name for v in sf.voices(0, 40, bank=128)] == ["noise"]


def test_pitch_follows_key_root_and_tuning(tiny_sf2):
    sf = SoundFont(tiny_sf2)
    # root 60 plays 500 Hz; an octave up (72) plays the high sample at its root: 1000 Hz
    assert peak_hz(render_note(sf, 0, 60, 100, 1.0, tail=0.0)) == pytest.approx(500, abs=2)
    assert peak_hz(render_note(sf, 0, 72, 100, 1.0, tail=0.0)) == pytest.approx(1000, abs=2)
    # 7 semitones above root 60 on the low sample: 500 * 2^(7/12)
    f = peak_hz(render_note(sf, 0, 67 - 1, 100, 1.0, tail=0.0))
    assert f == pytest.approx(500 * 2 ** (6 / 12), abs=2)
    # preset-level fine tune (+100 cents) adds to the instrument's: one semitone up
    sf.presets[(0, 0)].zones[0].gens[52] = 100
    assert peak_hz(render_note(sf, 0, 60, 100, 1.0, tail=0.0)) == pytest.approx(
        500 * 2 ** (1 / 12), abs=2
    )


def test_loop_sustains_and_one_shot_stops(tiny_sf2):
    sf = SoundFont(tiny_sf2)
    looped = render_note(sf, 0, 60, 127, 1.0, tail=0.0)  # sample is 0.4 s, looped
    one_shot = render_note(sf, 1, 60, 127, 1.0, tail=0.0)  # the same sample, no loop
    assert len(looped) == len(one_shot) == RATE
    late = slice(int(0.6 * RATE), RATE)
    assert np.abs(looped[late]).max() == pytest.approx(0.5, rel=0.02)
    assert np.abs(one_shot[late]).max() == 0.0
    assert np.abs(one_shot[: int(0.3 * RATE)]).max() == pytest.approx(0.5, rel=0.02)


def test_release_and_velocity(tiny_sf2):
    sf = SoundFont(tiny_sf2)
    # kit: release -1200 timecents = 0.5 s for -100 dB: after 0.25 s of release, -50 dB
    w = render_note(sf, 0, 40, 127, 0.05, bank=128, tail=0.5)
    assert w.shape == (int(0.55 * RATE),)
    # the noise sample is 0.1 s long: compare against a looped sine instead for the release
    sine = render_note(sf, 0, 60, 127, 0.5, tail=0.5)
    before = np.abs(sine[int(0.4 * RATE) : int(0.5 * RATE)]).max()
    after = np.abs(sine[int(0.5 * RATE) + 2 : int(0.52 * RATE)]).max()
    assert before == pytest.approx(0.5, rel=0.02)
    assert after < 0.01  # default release (1 ms): silent 2 samples after note-off
    # velocity 64 of 127: 40 log10(64/127) dB (SF2 default curve)
    soft = render_note(sf, 0, 60, 64, 0.5, tail=0.0)
    ratio = np.abs(soft).max() / np.abs(sine[: int(0.5 * RATE)]).max()
    assert 20 * np.log10(ratio) == pytest.approx(40 * np.log10(64 / 127), abs=0.05)


def test_bad_files_name_the_file(tmp_path, tiny_sf2):
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(SF2Error, match=r"bad\.sf2: not a SoundFont 2 file"):
        SoundFont(bad)
    with pytest.raises(SF2Error, match=r"missing\.sf2: cannot read"):
        SoundFont(tmp_path / "missing.sf2")
    truncated = tmp_path / "trunc.sf2"
    truncated.write_bytes(tiny_sf2.read_bytes()[:-40])
    with pytest.raises(SF2Error, match=r"trunc\.sf2: chunk"):
        SoundFont(truncated)
    with pytest.raises(SF2Error, match="no preset bank 0 program 5"):
        SoundFont(tiny_sf2).voices(5, 60)


def test_sample_pitch_correction(tmp_path, sf2_writer):
    """A sample recorded 100 cents flat (chPitchCorrection = -100) at root 60 sounds one semitone
    below its nominal pitch; the renderer applies the correction."""
    pcm = (16000 * np.sin(2 * np.pi * 500 * np.arange(6400) / RATE)).astype(np.int16)
    path = sf2_writer(
        tmp_path / "corr.sf2",
        [
            {
                "name": "flat",
                "pcm": pcm,
                "rate": RATE,
                "root": 60,
                "correction": -100,
                "loop": (320, 3200),
            }
        ],
        [{"name": "I", "zones": [{54: 1, 53: 0}]}],
        [{"name": "P", "program": 0, "zones": [{41: 0}]}],
    )
    f = peak_hz(render_note(SoundFont(path), 0, 60, 100, 1.0, tail=0.0))
    assert f == pytest.approx(500 * 2 ** (-1 / 12), abs=2)
