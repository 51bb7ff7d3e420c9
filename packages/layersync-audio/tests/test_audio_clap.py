"""``clap-laion-music`` (``fad_clap``): laion_clap's own audio encoder under random weights, fed
as fadtk feeds it, equals laion_clap's audio forward on windows cut here independently.

Windowing as fadtk's ``CLAPLaionModel``: a 10-s window at every whole second while the start is
inside the clip, each zero-padded to 10 s, so a clip of N samples gives ceil(N / 48000) windows
(23 s -> 23, 3.5 s -> 4); the last windows are mostly padding. Quantisation as laion_clap's
``int16_to_float32(float32_to_int16(x))``: clip to [-1, 1], times 32767, cast to int16 (the cast
truncates toward zero), divided by 32767.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layersync.assets import AssetError

RATE, WINDOW, HOP = 48000, 480000, 48000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random HTSAT-tiny CLAP and its checkpoint in the official layout."""
    from layersync_audio.clap import build_clap

    torch.manual_seed(0)
    model = build_clap("HTSAT-tiny")
    path = tmp_path_factory.mktemp("clap") / "tiny.pt"
    torch.save(
        {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path
    )
    return model, path


def clips() -> tuple[np.ndarray, np.ndarray]:
    """3.5 s at 16 kHz (tones + noise, peaks above 1 to exercise the clipping) and 23 s at
    48 kHz (a chirp with noise)."""
    rng = np.random.default_rng(0)
    t = np.arange(56000) / 16000
    short = 0.7 * np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1230 * t)
    short += 0.1 * rng.standard_normal(len(t))
    t = np.arange(23 * RATE) / RATE
    long = 0.4 * np.sin(2 * np.pi * (200 + 40 * t) * t) + 0.05 * rng.standard_normal(len(t))
    return short.astype(np.float32), long.astype(np.float32)


def reference_windows(x: np.ndarray) -> np.ndarray:
    """Quantised, zero-padded 10-s windows every second (written apart from clap.py)."""
    q = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    q = (q / 32767.0).astype(np.float32)
    out = []
    for start in range(0, len(q), HOP):
        chunk = q[start : start + WINDOW]
        out.append(np.pad(chunk, (0, WINDOW - len(chunk))))
    return np.stack(out)


def audio_forward(model, windows: np.ndarray) -> torch.Tensor:
    """laion_clap's audio path spelled out: HTSAT embedding -> audio projection -> L2 norm."""
    with torch.no_grad():
        h = model.audio_branch({"waveform": torch.from_numpy(windows)}, device="cpu")
        return F.normalize(model.audio_projection(h["embedding"]), dim=-1)


def test_windows_and_quantisation():
    from layersync_audio.clap import quantize, windows

    for seconds, count in [(23, 23), (3.5, 4), (10, 10), (10.5, 11), (0.01, 1)]:
        x = torch.randn(round(seconds * RATE))
        w = windows(x)
        assert w.shape == (count, WINDOW)
        for k in (0, count - 1):
            part = x[k * HOP : k * HOP + WINDOW]
            assert torch.equal(w[k, : len(part)], part) and not w[k, len(part) :].any()
    x = torch.tensor([1.9 / 32767, -1.9 / 32767, 2.0, -3.0, 0.25])
    want = torch.tensor([1 / 32767, -1 / 32767, 1.0, -1.0, 8191 / 32767])
    torch.testing.assert_close(quantize(x), want, rtol=0, atol=1e-9)


def test_embedding_equals_laion_clap_audio_forward(tiny):
    """Every window of both clips is embedded; the reference runs on all 4 windows of the short
    clip and on 6 of the long one (first, second, last full, first padded, last)."""
    import torchaudio

    from layersync_audio.clap import ClapEmbedding, load_clap

    model, path = tiny
    embed = ClapEmbedding(load_clap(path, "HTSAT-tiny"))
    assert embed.model is not model
    short16k, long48k = clips()
    short = torchaudio.functional.resample(torch.from_numpy(short16k), 16000, RATE)  # as fad.py
    got = embed([short, torch.from_numpy(long48k)])
    ref_short, ref_long = reference_windows(short.numpy()), reference_windows(long48k)
    assert (len(ref_short), len(ref_long)) == (4, 23) and got.shape == (27, 512)
    picked = [0, 1, 12, 13, 14, 22]
    want = audio_forward(model, np.concatenate([ref_short, ref_long[picked]]))
    torch.testing.assert_close(got[[0, 1, 2, 3, *(4 + i for i in picked)]], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(27))
    # laion_clap's get_audio_embedding (what get_audio_embedding_from_data ends in) is the same
    window = {"waveform": torch.from_numpy(ref_long[13]), "longer": torch.tensor([False])}
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_audio_embedding([window])[0], want[7], rtol=0, atol=1e-6
        )


def test_partial_or_foreign_checkpoint(tiny, tmp_path):
    from layersync_audio.clap import load_clap

    path = tiny[1]
    state = torch.load(path, weights_only=True)["state_dict"]
    del state["module.audio_projection.0.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.pt")
    with pytest.raises(AssetError, match=r"partial\.pt: not a HTSAT-tiny CLAP checkpoint \(lacks"):
        load_clap(tmp_path / "partial.pt", "HTSAT-tiny")
    with pytest.raises(AssetError, match=r"tiny\.pt: not a HTSAT-base CLAP checkpoint"):
        load_clap(path)  # the music checkpoint's architecture is HTSAT-base


def test_music_embedding_name_and_strict_load(tmp_path):
    """``clap-laion-music`` -> ``fad_clap``, HTSAT-base, every audio key of the file loaded."""
    from layersync.config import resolve
    from layersync_audio.clap import AUDIO_KEYS, build_clap
    from layersync_audio.fad import load_embedding, metric_name
    from layersync_audio.plugin import plugin

    assert metric_name("clap-laion-music") == "fad_clap"
    cfg = resolve(plugin, overrides=["metric.embedding=clap-laion-music"])
    # the primary metric carries the network; the embedded classes add the family metrics
    assert list(plugin.metrics_for(cfg)) == ["fad_clap", "family_accuracy", "family_accuracy_real"]
    torch.manual_seed(1)
    state = {k: v for k, v in build_clap().state_dict().items() if k.startswith(AUDIO_KEYS)}
    path = tmp_path / "music_audioset_epoch_15_esc_90.14.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    embed = load_embedding("clap-laion-music", str(path))
    assert (embed.dim, embed.sample_rate) == (512, 48000)
    loaded = embed.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_missing_weights(tmp_path, monkeypatch):
    """fad=on: one ``error:`` line before the run directory; fad=auto: one warning, no FAD."""
    from typer.testing import CliRunner

    from layersync.cli import app
    from layersync.config import resolve
    from layersync_audio.fad import load_embedding
    from layersync_audio.plugin import plugin

    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    missing, runs = tmp_path / "music_audioset_epoch_15_esc_90.14.pt", tmp_path / "runs"
    args = ["train", "-m", "audio", "metric.embedding=clap-laion-music", "metric.fad=on",
            f"metric.weights={missing}", f"run.out_dir={runs}", "run.name=r"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2, done.output
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors == [
        f"error: metric.weights: {missing}: file not found (download "
        "music_audioset_epoch_15_esc_90.14.pt from HuggingFace lukewys/laion_clap)"
    ]
    assert not runs.exists()
    cfg = resolve(plugin, overrides=["metric.embedding=clap-laion-music"])  # fad=auto, no weights
    assert plugin.check_assets(cfg) is None
    with pytest.warns(UserWarning, match="FAD skipped: metric.weights: pass the LAION-CLAP"):
        assert plugin.evaluate(None, cfg, tmp_path, torch.Generator()) == {}  # before the model
    # laion-clap not installed: named first, with how to install it
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "laion_clap" else find_spec(n, *a)
    )
    with pytest.raises(AssetError, match=r"needs laion-clap: pip install --no-deps laion-clap=="):
        load_embedding("clap-laion-music", str(missing))
