"""Audio loaders (folders, MTG-Jamendo TSV), log-mel round trip, the embedded SF2 data."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from layersync_audio.data import AudioError, AudioFolder, JamendoDataset, read_audio

RATE = 16000


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(
        np.float32
    )


def peak_hz(wave: torch.Tensor, rate: int = RATE) -> float:
    spec = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
    return float(np.argmax(spec) * rate / len(wave))


@pytest.fixture
def folder(tmp_path):
    """piano/: a 3-s 8 kHz mono WAV (440 Hz) and a 0.5-s FLAC; drums/: a 2.5-s stereo OGG
    (L 0.6, R 0.2 constant-ish tones) and a corrupt WAV."""
    (tmp_path / "piano").mkdir()
    (tmp_path / "drums").mkdir()
    sf.write(tmp_path / "piano" / "a.wav", tone(440, 3.0, 8000), 8000)
    sf.write(tmp_path / "piano" / "b.flac", tone(1000, 0.5, RATE), RATE)
    stereo = np.stack([tone(300, 2.5, RATE, 0.6), tone(300, 2.5, RATE, 0.2)], 1)
    sf.write(tmp_path / "drums" / "c.ogg", stereo, RATE)
    (tmp_path / "drums" / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    return tmp_path


def test_read_audio_resamples_and_mixes_down(folder):
    wave = read_audio(folder / "piano" / "a.wav", RATE)
    assert wave.shape == (3 * RATE,)
    assert peak_hz(wave) == pytest.approx(440, abs=1)
    mono = read_audio(folder / "drums" / "c.ogg", RATE)  # (0.6 + 0.2) / 2 = 0.4 amplitude
    assert mono.shape == (int(2.5 * RATE),)
    assert float(mono[RATE : 2 * RATE].abs().max()) == pytest.approx(0.4, abs=0.02)
    with pytest.raises(AudioError, match=r"drums/bad\.wav: cannot decode audio \("):
        read_audio(folder / "drums" / "bad.wav", RATE)


def test_folder_classes_crops_padding_and_errors(folder):
    ds = AudioFolder(folder, seconds=2.0, sample_rate=RATE, seed=3, on_error="error")
    assert ds.classes == ["drums", "piano"] and len(ds) == 4
    assert [f.name for f in ds.files] == ["bad.wav", "c.ogg", "a.wav", "b.flac"]
    with pytest.raises(AudioError, match=r"bad\.wav: cannot decode audio"):
        ds[0]
    x, y = ds[2]  # 3-s file: a seeded 2-s crop
    assert x.shape == (2 * RATE,) and int(y) == 1
    assert torch.equal(ds[2][0], x)  # same (seed, epoch, index): same crop
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], x)  # another epoch: another crop
    short, _ = ds[3]  # 0.5-s clip: padded with silence after it
    assert short.shape == (2 * RATE,)
    assert (
        float(short[: RATE // 2].abs().max()) > 0.4
        and float(short[RATE // 2 + 10 :].abs().max()) == 0.0
    )


def test_folder_skip_counts_bad_files(folder):
    ds = AudioFolder(folder, seconds=1.0, sample_rate=RATE, on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped \(1 so far\): .*bad\.wav: cannot decode audio"):
        x, y = ds[0]  # bad.wav -> the next readable item (c.ogg, class drums)
    assert x.shape == (RATE,) and int(y) == 0 and ds.skipped == 1
    assert float(x.abs().max()) == pytest.approx(0.4, abs=0.02)
    with pytest.raises(ValueError, match=r"data\.on_error must be 'error' or 'skip'"):
        AudioFolder(folder, 1.0, on_error="ignore")
    with pytest.raises(FileNotFoundError, match="audio folder not found"):
        AudioFolder(folder / "nope", 1.0)


def test_folder_without_classes(tmp_path):
    sf.write(tmp_path / "x.wav", tone(200, 1.0, RATE), RATE)
    ds = AudioFolder(tmp_path, 1.0)
    assert ds.num_classes == 1 and len(ds) == 1 and int(ds[0][1]) == 0


def _jamendo(tmp_path, rows):
    (tmp_path / "14").mkdir(exist_ok=True)
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
    (tmp_path / "train.tsv").write_text(header + "".join("\t".join(r) + "\n" for r in rows))
    return tmp_path / "train.tsv"


def test_jamendo_tags_vocabulary_and_missing_rows(tmp_path):
    (tmp_path / "14").mkdir()
    sf.write(tmp_path / "14" / "214.flac", tone(220, 1.5, RATE), RATE)
    sf.write(tmp_path / "14" / "314.flac", tone(330, 1.5, RATE), RATE)
    rows = [
        [
            "track_214",
            "artist_1",
            "album_1",
            "14/214.flac",
            "1.5",
            "genre---rock",
            "instrument---guitar",
            "mood/theme---happy",
        ],
        [
            "track_314",
            "artist_2",
            "album_2",
            "14/314.flac",
            "1.5",
            "genre---jazz",
            "instrument---piano",
        ],
        ["track_414", "artist_2", "album_2", "14/414.flac", "1.5", "genre---pop"],
    ]
    tsv = _jamendo(tmp_path, rows)
    with pytest.raises(
        AudioError, match=r"train\.tsv, line 4: audio file not found: .*14/414\.flac"
    ):
        JamendoDataset(tmp_path, tsv, 1.0)
    with pytest.warns(UserWarning, match=r"train\.tsv: skipped 1 rows .*line 4, .*414\.flac"):
        ds = JamendoDataset(tmp_path, tsv, 1.0, on_error="skip", seed=0)
    assert [line for line, _ in ds.missing] == [4]
    assert ds.vocabulary == [
        "genre---jazz",
        "genre---rock",
        "instrument---guitar",
        "instrument---piano",
    ]
    x, tags = ds[0]
    assert x.shape == (RATE,) and tags.tolist() == [0.0, 1.0, 1.0, 0.0]
    moods = JamendoDataset(tmp_path, tsv, 1.0, categories=("mood/theme",), on_error="skip")
    assert moods.vocabulary == ["mood/theme---happy"] and moods[1][1].tolist() == [0.0]
    # eval split with the train vocabulary: unknown tags are dropped, the order is the train's
    ev = JamendoDataset(tmp_path, tsv, 1.0, vocabulary=["genre---rock"], on_error="skip")
    assert ev[0][1].tolist() == [1.0] and ev[1][1].tolist() == [0.0]
    with pytest.raises(
        ValueError,
        match=r"data.tag_categories: unknown category 'genres' \(choices: genre, instrument, mood/theme\)",
    ):
        JamendoDataset(tmp_path, tsv, 1.0, categories=("genres",))


def test_log_mel_statistics_and_griffin_lim_round_trip():
    from layersync_audio.mel import LogMel

    mel = LogMel(sample_rate=RATE, n_fft=512, hop_length=128, n_mels=40, griffin_lim_iters=16)
    waves = torch.from_numpy(np.stack([tone(f, 1.0, RATE) for f in (300, 600, 1200, 2400)]))
    mel.fit([waves[:2], waves[2:]])
    x = mel.encode(waves)
    assert x.shape == (4, 40, RATE // 128)
    # standardised per bin over the fitted data: mean 0, std 1 in every bin
    flat = x.transpose(0, 1).reshape(40, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(40), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(40), atol=1e-3, rtol=0)
    g = torch.Generator().manual_seed(0)
    back = mel.decode(x, generator=g)
    assert back.shape == (4, (RATE // 128) * 128)
    assert torch.equal(back, mel.decode(x, generator=torch.Generator().manual_seed(0)))
    for wave, f in zip(back, (300, 600, 1200, 2400), strict=True):
        assert peak_hz(wave) == pytest.approx(f, rel=0.05)  # within a mel band
    # the loud bins (within 30 dB of each clip peak) come back within 3 dB after Griffin-Lim
    ref, got = mel.log_mel(waves), mel.log_mel(back)
    loud = ref > ref.amax((1, 2), keepdim=True) - 3 * np.log(10)
    err = (got - ref)[loud].abs().mean().item()
    assert err < 0.35, err  # torchaudio InverseMelScale + clipping: 0.71
    # the inverse mel scale alone: its mel projection matches to 0.05 nats
    proj = (mel.mel.mel_scale.fb.T @ mel.inverse_mel(ref.exp())).clamp_min(mel.floor).log()
    assert (proj - ref)[loud].abs().mean() < 0.05


def test_embedded_dataset_on_tiny_sf2(tiny_sf2, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path))
    from layersync_audio import embedded

    fams = {
        "piano": (0, (0,), 55, 65, 0.5),
        "kit": (128, (0,), 35, 45, 0.0),
    }
    monkeypatch.setattr(embedded, "FAMILIES", fams)
    monkeypatch.setattr(embedded.EmbeddedAudio, "num_classes", 2)
    ds = embedded.EmbeddedAudio("train", per_family=3, seconds=1.0, sf2=tiny_sf2)
    assert ds.waves.shape == (6, RATE) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    peaks = np.abs(ds.waves).max(1)
    assert np.all((peaks >= 0.5 - 1e-6) & (peaks <= 0.9 + 1e-6))  # normalised, not silent
    assert len(list((tmp_path / "audio" / "embedded").glob("*.npy"))) == 1
    again = embedded.EmbeddedAudio("train", per_family=3, seconds=1.0, sf2=tiny_sf2)
    assert np.array_equal(again.waves, ds.waves)  # fixed seeds (and the cache) give the same clips
    fresh = embedded.EmbeddedAudio("train", per_family=3, seconds=1.0, sf2=tiny_sf2, cache=False)
    assert np.array_equal(fresh.waves, ds.waves)
    ev = embedded.EmbeddedAudio("eval", per_family=3, seconds=1.0, sf2=tiny_sf2, cache=False)
    assert not np.array_equal(ev.waves, ds.waves)
    x, y = ds[4]
    assert x.shape == (RATE,) and int(y) == 1


def test_decode_clamps_to_the_encoders_range():
    """A sampler's overshoot (above a bin's training maximum, below the floor) decodes as the
    nearest value the encoder can produce: an overshoot never reaches the waveform."""
    from layersync_audio.mel import LogMel

    mel = LogMel(sample_rate=RATE, n_fft=512, hop_length=128, n_mels=40, griffin_lim_iters=4)
    waves = torch.from_numpy(np.stack([tone(f, 1.0, RATE) for f in (300, 1200)]))
    mel.fit([waves])
    torch.testing.assert_close(mel.peak, mel.log_mel(waves).amax((0, 2)))
    x = mel.encode(waves)
    wild = x + torch.linspace(-30, 30, x.shape[-1])  # far below the floor, then far above peak
    log = wild * mel.std[:, None] + mel.mean[:, None]
    inside = torch.minimum(log.clamp_min(np.log(mel.floor)), mel.peak[:, None])
    assert not torch.equal(log, inside)
    tame = (inside - mel.mean[:, None]) / mel.std[:, None]
    a = mel.decode(wild, generator=torch.Generator().manual_seed(0))
    b = mel.decode(tame, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # float round-off of (de)standardising
