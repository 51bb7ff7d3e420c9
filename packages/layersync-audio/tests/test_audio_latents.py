"""The VAE latent path on a tiny random AutoencoderOobleck (stereo, 16 kHz, 8 samples per
frame, 4 latent channels): `layersync audio encode` (folder and MTG-Jamendo TSV) -> cache equal
to a direct `vae.encode` -> seeded crops -> 20 training steps -> `layersync sample` -> WAV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from layersync.config import resolve

RATE, HOP, WINDOW = 16000, 8, 200  # --seconds 0.1 -> 200 frames = 1600 samples
ENCODE = ["--seconds", "0.1", "--dtype", "float32", "--batch-size", "3"]
TRAIN = [
    "--modality",
    "audio",
    "data.source=latents",
    "data.frames=64",
    "model.arch=custom",
    "model.depth=2",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=2",
    "train.steps=20",
    "train.batch_size=4",
    "train.device=cpu",
    "log.progress=false",
    "log.sample_count=2",
    "checkpoint.every=20",
    "sampler.steps=2",
    "metric.fad=off",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderOobleck(
        encoder_hidden_size=8,
        downsampling_ratios=[2, 4],
        channel_multiples=[1, 2],
        decoder_channels=8,
        decoder_input_channels=4,
        audio_channels=2,
        sampling_rate=RATE,
    )
    path = tmp_path_factory.mktemp("vae") / "sao-vae"
    vae.save_pretrained(path)
    return path


def tone(seconds: float, rate: int, freq: float, channels: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave, 0.5 * wave], 1)[:, :channels].astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """a/: 0.5 s mono 16 kHz (5 windows), 0.33 s stereo 22.05 kHz (4 windows, the last ending
    at the file's end); b/: 0.05 s stereo (1 window, padded with silence)."""
    root = tmp_path_factory.mktemp("clips")
    for name in ("a", "b"):
        (root / name).mkdir()
    sf.write(root / "a" / "0.wav", tone(0.5, RATE, 440, 1), RATE)
    sf.write(root / "a" / "1.wav", tone(0.33, 22050, 660, 2), 22050)
    sf.write(root / "b" / "0.flac", tone(0.05, RATE, 880, 2), RATE)
    return root


def expected_windows(path: Path) -> list[tuple[int, torch.Tensor]]:
    """(start, stereo window) of one file, read independently of the plugin's loaders."""
    import torchaudio

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.T.copy()).expand(2, -1)
    if rate != RATE:
        wave = torchaudio.functional.resample(wave, rate, RATE)
    n, length = wave.shape[1], WINDOW * HOP
    starts = list(range(0, max(1, n - length + 1), length))
    if n > length and starts[-1] + length < n:
        starts.append(n - length)
    out = []
    for s in starts:
        w = wave[:, s : s + length]
        out.append((s, torch.nn.functional.pad(w, (0, length - w.shape[1]))))
    return out


def encode(*args: str | Path):
    from layersync_audio.commands import app

    return CliRunner().invoke(app, ["encode", *map(str, args), *ENCODE])


def test_encode_folder_equals_direct_vae_encode(vae_dir, clips, tmp_path):
    from diffusers import AutoencoderOobleck

    from layersync.latents import LatentCache

    out = tmp_path / "lat"
    done = encode(clips, "--vae", vae_dir, "--out", out)
    assert done.exit_code == 0, done.output
    assert "10 windows of 200 frames from 3 files" in done.output
    cache = LatentCache(out)
    assert len(cache) == 10 and cache.latent_shape == (4, WINDOW)
    assert cache.scale_factor == 1.0  # the Oobleck config has no scaling factor
    meta = cache.meta
    assert meta["classes"] == ["a", "b"] and meta["condition"] == "labels"
    assert (meta["sample_rate"], meta["audio_channels"], meta["hop_length"]) == (RATE, 2, HOP)
    assert list(cache.fields) == ["labels", "track", "start", "file"]

    vae = AutoencoderOobleck.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval()
    files = [clips / "a" / "0.wav", clips / "a" / "1.wav", clips / "b" / "0.flac"]
    rows = [(f, t, s, w) for t, f in enumerate(files) for s, w in expected_windows(f)]
    assert [s for *_, s, _ in rows] == [0, 1600, 3200, 4800, 6400, 0, 1600, 3200, 3680, 0]
    with torch.no_grad():
        dist = vae.encode(torch.stack([w for *_, w in rows])).latent_dist
    for i in range(len(rows)):
        mean, std = cache.moments(i)
        torch.testing.assert_close(mean, dist.mean[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(std, dist.std[i], rtol=1e-4, atol=1e-5)
    assert cache.field("labels").tolist() == [0] * 9 + [1]
    assert cache.field("track").tolist() == [t for _, t, _, _ in rows]
    assert cache.field("start").tolist() == [s for _, _, s, _ in rows]
    assert cache.field("file") == [str(f) for f, *_ in rows]


def test_encode_jamendo_tsv_tags_and_skip(vae_dir, tmp_path):
    from layersync.latents import LatentCache

    (tmp_path / "14").mkdir()
    tags = [("genre---rock", "mood/theme---sad"), ("genre---jazz", "instrument---piano")]
    rows = []
    for i, row_tags in enumerate(tags):
        sf.write(tmp_path / "14" / f"{i}.flac", tone(0.1, 44100, 300, 2), 44100)
        rows.append("\t".join([f"track_{i}", "a", "b", f"14/{i}.flac", "0.1", *row_tags]))
    (tmp_path / "14" / "8.flac").write_bytes(b"fLaC but not really")
    rows.append("track_8\ta\tb\t14/8.flac\t0.1\tgenre---pop")  # undecodable
    rows.append("track_9\ta\tb\t14/9.flac\t0.1\tgenre---pop")  # its file is missing
    tsv = tmp_path / "autotagging-train.tsv"
    tsv.write_text("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n" + "\n".join(rows))
    args = [tmp_path, "--tsv", tsv, "--vae", vae_dir, "--out", tmp_path / "lat"]
    failed = encode(*args)
    assert failed.exit_code == 2 and "line 5: audio file not found" in failed.output
    assert not (tmp_path / "lat").exists()
    done = encode(*args, "--on-error", "skip")
    assert done.exit_code == 0, done.output
    assert "2 windows of 200 frames from 2 files; 2 unreadable or missing" in done.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"RIFF junk")
    failed = encode(tmp_path / "bad", "--vae", vae_dir, "--out", tmp_path / "lat2")
    errors = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.exit_code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: {tmp_path / 'bad' / 'x.wav'}: cannot decode audio")
    cache = LatentCache(tmp_path / "lat")
    # the TSV's tags of the asked categories (no mood) over the rows whose file exists
    vocabulary = ["genre---jazz", "genre---pop", "genre---rock", "instrument---piano"]
    assert cache.meta["vocabulary"] == vocabulary and cache.meta["condition"] == "tags"
    assert cache.field("tags").tolist() == [[0, 0, 1, 0], [1, 0, 0, 1]]
    assert cache.field("tags").dtype == torch.float32


def test_crops_are_seeded_and_sample_the_posterior(vae_dir, clips, tmp_path):
    from layersync_audio.latents import AudioLatents

    out = tmp_path / "lat"
    assert encode(clips, "--vae", vae_dir, "--out", out).exit_code == 0
    ds = AudioLatents(out, 64, seed=3)
    z, label = ds[2]
    assert z.shape == (4, 64) and int(label) == 0
    again = AudioLatents(out, 64, seed=3)
    torch.testing.assert_close(again[2][0], z)  # the item's generator: exact resume
    g = ds.generator(2)
    start = int(torch.randint(WINDOW - 64 + 1, (1,), generator=g))
    mean, std = ds.cache.moments(2)
    eps = torch.randn(4, 64, generator=g)
    want = mean[:, start : start + 64] + std[:, start : start + 64] * eps
    torch.testing.assert_close(z, want)
    means = AudioLatents(out, 64, sample=False, seed=3)
    torch.testing.assert_close(means[2][0], mean[:, start : start + 64])
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], z)  # a new crop and noise every epoch
    with pytest.raises(ValueError, match=r"data.frames = 201 exceeds the 200-frame windows"):
        AudioLatents(out, 201)


def test_train_on_latents_then_sample_wavs(vae_dir, clips, tmp_path):
    from layersync.cli import app

    out = tmp_path / "lat"
    assert encode(clips, "--vae", vae_dir, "--out", out).exit_code == 0
    runs = tmp_path / "runs"
    train = [*TRAIN, f"data.path={out}", f"vae.path={vae_dir}", f"run.out_dir={runs}", "run.name=r"]
    done = CliRunner().invoke(app, ["train", *train])
    assert done.exit_code == 0, done.output
    records = [json.loads(x) for x in (runs / "r" / "metrics.jsonl").open()]
    assert max(r.get("step", 0) for r in records) == 20
    samples = tmp_path / "samples"
    args = ["sample", str(runs / "r"), "-n", "3", "--batch-size", "2", "--out", str(samples)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "weight_norm" not in done.stderr  # diffusers' deprecation noise is filtered
    wavs = sorted(samples.rglob("*.wav"))  # two batches merged: wav/<global index>.wav
    assert [w.relative_to(samples).as_posix() for w in wavs] == [
        f"wav/{i:06d}.wav" for i in range(3)
    ]
    assert (samples / "grid.png").is_file() and not (samples / "parts").exists()
    assert len(list((runs / "r" / "samples").rglob("*.wav"))) == 2  # the run's EMA samples
    for wav in wavs:
        data, rate = sf.read(wav, dtype="float32", always_2d=True)
        assert rate == RATE and data.shape == (64 * HOP, 2)  # 64 frames x 8, stereo
        assert np.isfinite(data).all()


def test_missing_vae_fails_before_the_run_directory(vae_dir, clips, tmp_path, capsys):
    from layersync.cli import app, main

    out = tmp_path / "lat"
    assert encode(clips, "--vae", vae_dir, "--out", out).exit_code == 0
    runs, missing = tmp_path / "runs", tmp_path / "no-vae"
    train = [*TRAIN, f"data.path={out}", f"vae.path={missing}", f"run.out_dir={runs}", "run.name=r"]
    done = CliRunner().invoke(app, ["train", *train])
    assert done.exit_code == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors == [f"error: vae.path: no such folder: {missing}"]
    assert not runs.exists()
    (tmp_path / "not-vae").mkdir()
    cfg_dir = tmp_path / "not-vae"
    done = CliRunner().invoke(app, ["train", *train[:-3], f"vae.path={cfg_dir}", *train[-2:]])
    assert done.exit_code == 2 and "not a diffusers AutoencoderOobleck folder" in done.stderr
    assert not runs.exists()
    # `layersync audio encode` through the core entry point (the plugin's sub-app)
    with pytest.raises(SystemExit) as exit_:
        main(["audio", "encode", str(clips), "--vae", str(missing), "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"error: --vae: no such folder: {missing}"]
    assert not (tmp_path / "x").exists()


def test_decoded_samples_and_fad_reference(vae_dir, clips, tmp_path):
    """FAD runs on decoded, mono, resampled waveforms (musicnn, when installed)."""
    from layersync.assets import AssetError
    from layersync_audio.musicnn import default_weights
    from layersync_audio.plugin import plugin

    try:
        default_weights()
    except AssetError as e:
        pytest.skip(str(e))
    out = tmp_path / "lat"
    assert encode(clips, "--vae", vae_dir, "--out", out).exit_code == 0
    overrides = [o for o in TRAIN[2:] if not o.startswith("metric.fad")]
    cfg = resolve(
        plugin,
        overrides=[
            *overrides,
            f"data.path={out}",
            f"vae.path={vae_dir}",
            "metric.fad=on",
            "metric.num_samples=4",
            "metric.batch_size=4",
        ],
    )
    plugin.check_assets(cfg)
    model = plugin.build_model(cfg).eval()
    assert (model.in_channels, model.input_size) == (4, (64,))
    metrics = plugin.evaluate(model, cfg, tmp_path / "eval", torch.Generator().manual_seed(0))
    assert set(metrics) == {"fad_musicnn"} and np.isfinite(metrics["fad_musicnn"])
    assert len(list((tmp_path / "eval" / "wav").glob("fad-samples-*.wav"))) == 4


def test_paper_preset_trains_on_latent_crops(vae_dir, clips, tmp_path):
    from layersync_audio.plugin import data_spec, plugin

    out = tmp_path / "lat"
    assert encode(clips, "--vae", vae_dir, "--out", out).exit_code == 0
    cfg = resolve(
        plugin, preset="sit-xl1-jamendo", overrides=[f"data.path={out}", f"vae.path={vae_dir}"]
    )
    assert (cfg.data.source, cfg.data.frames, cfg.data.latent) == ("latents", 215, "sample")
    assert cfg.model.arch == "SiT-XL/1" and cfg.layersync.pairs == "8<-16"
    assert (cfg.metric.embedding, cfg.metric.fad) == ("clap-laion-music", "on")
    with pytest.raises(ValueError, match=r"metric.weights: pass the LAION-CLAP music checkpoint"):
        plugin.check_assets(cfg)  # the paper's FAD-CLAP: the user's checkpoint, checked first
    with pytest.raises(ValueError, match=r"data.frames = 215 exceeds the 200-frame windows"):
        data_spec(cfg)  # this tiny cache holds 0.1-s windows; the paper's needs >= 10 s
