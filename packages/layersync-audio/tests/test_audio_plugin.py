"""The audio plugin end to end: core conformance suite, tags + CFG, outputs, FAD, bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from layersync.config import resolve

# A tiny demo: 2 clips per family (16 train, 8 eval), 2 blocks, 3 sampler steps, 4 GL iters.
TINY = [
    "data.per_family=2",
    "data.eval_per_family=1",
    "mel.stats_items=16",
    "mel.griffin_lim_iters=4",
    "model.depth=2",
    "model.hidden_size=32",
    "model.num_heads=2",
    "train.batch_size=4",
    "sampler.steps=3",
    "metric.num_samples=8",
    "metric.batch_size=8",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def plugin():
    from layersync.assets import AssetError
    from layersync_audio.embedded import default_sf2

    try:
        default_sf2()
    except AssetError as e:
        pytest.skip(str(e))
    from layersync_audio.plugin import plugin

    return plugin


def _musicnn_or_skip():
    from layersync.assets import AssetError
    from layersync_audio.musicnn import default_weights

    try:
        default_weights()
    except AssetError as e:
        pytest.skip(str(e))


@pytest.mark.weights
def test_conformance_suite(plugin, tmp_path):
    _musicnn_or_skip()
    testing = pytest.importorskip("layersync.testing")
    report = testing.check_plugin(plugin, TINY, tmp_dir=tmp_path)
    assert set(report.passed) == set(testing.CHECKS)


def test_demo_preset_sets_its_measured_settings(plugin):
    # the demo's derived settings, measured in the README: 6 x 256 (the output layer reaches all
    # 256 values of a patch-4 token), 1400 steps of batch 16 (413 s); pair and λ left to the
    # core's defaults (the depth-ratio pair, 0.2)
    cfg = resolve(plugin, preset="demo")
    assert (cfg.model.depth, cfg.model.hidden_size, cfg.model.patch_size) == (6, 256, 4)
    assert (cfg.train.steps, cfg.train.batch_size) == (1400, 16)
    assert (cfg.layersync.pairs, cfg.layersync.weight) == (None, None)


def test_demo_shapes_objective_and_loss_at(plugin):
    cfg = resolve(plugin, preset="demo", overrides=TINY)
    ds = plugin.build_dataset(cfg, "train")
    x, y = ds[3]
    assert len(ds) == 16 and x.shape == (64, 128) and int(y) == 1  # 2 clips per family
    model = plugin.build_model(cfg)
    assert model.input_size == (128,) and model.num_tokens == 32 and model.num_classes == 8
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # leave the zero-init (adaLN-Zero) state: the condition must matter
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    batch = plugin.collate([ds[i] for i in range(0, 16, 2)])
    obj = plugin.build_objective(cfg)
    out = obj(model, batch, torch.Generator().manual_seed(0))
    assert out.loss.shape == (8,) and out.t.shape == (8,) and torch.isfinite(out.loss).all()
    # loss_at: common random numbers give identical losses, and equal the transport's loss at
    # that t without condition dropout (eval mode has none either)
    noise = obj.noise_like(batch, torch.Generator().manual_seed(1))
    t = torch.linspace(0.1, 0.9, 8)
    a, b = obj.loss_at(model, batch, t, noise), obj.loss_at(model, batch, t, noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.t, t)
    model.eval()
    xt = t[:, None, None] * batch[0] + (1 - t[:, None, None]) * noise
    expected = (model(xt, t, batch[1]) - (batch[0] - noise)).pow(2).mean((1, 2))
    torch.testing.assert_close(a.loss, expected)
    # probe: one forward with the null label, returns the labels and no token mask
    labels, mask = plugin.probe_forward(model, cfg, batch, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(labels, batch[1]) and mask is None


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return w, h


def test_sample_and_write(plugin, tmp_path):
    cfg = resolve(plugin, preset="demo", overrides=TINY)
    model = plugin.build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    cond = plugin.conditions(cfg, 16, g)
    assert cond.tolist() == list(range(8)) * 2  # one family per grid column
    names = plugin.describe_data(cfg)["classes"]  # label i is names[i], kept in data.json
    assert len(names) == 8 and names[0] == "piano" and names[-1] == "drums"
    waves = plugin.sample(model, cfg, 16, cond, g)
    assert waves.shape == (16, 32000) and waves.abs().max() <= 1.0
    paths = plugin.write_samples(waves, tmp_path, cfg)
    assert paths[0] == tmp_path / "grid.png" and len(paths) == 17
    # 8 columns x 2 rows of (64 mel x 128 frame) tiles with 2-px separators
    assert _png_size(paths[0]) == (8 * 130 + 2, 2 * 66 + 2)
    back, rate = sf.read(paths[1], dtype="int16")
    assert rate == 16000 and back.shape == (32000,)
    np.testing.assert_array_equal(back, np.round(waves[0].numpy().astype(np.float64) * 32767))


def test_tags_condition_and_cfg(plugin, tmp_path):
    """MTG-Jamendo layout: multi-hot tags, zero tags as the null condition for CFG."""
    (tmp_path / "14").mkdir()
    rate = 16000
    rows = []
    for i, tags in enumerate([("genre---rock", "instrument---guitar"), ("genre---jazz",)] * 2):
        t = np.arange(rate) / rate
        sf.write(tmp_path / "14" / f"{i}.flac", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), rate)
        rows.append("\t".join([f"track_{i}", "a", "b", f"14/{i}.flac", "1.0", *tags]))
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
    (tmp_path / "autotagging-train.tsv").write_text(header + "\n".join(rows) + "\n")
    (tmp_path / "autotagging-validation.tsv").write_text(header + rows[0] + "\n")
    overrides = [
        *TINY,
        "data.source=jamendo",
        f"data.path={tmp_path}",
        f"data.tsv={tmp_path / 'autotagging-train.tsv'}",
        "data.seconds=1.0",
        "sampler.cfg_scale=3.0",
    ]
    cfg = resolve(plugin, preset="demo", overrides=overrides)
    model = plugin.build_model(cfg)
    assert model.condition == "tags" and model.num_tags == 3  # genre---jazz, ---rock, guitar
    ev = plugin.build_dataset(cfg, "eval")
    x, tags = ev[0]
    assert x.shape == (64, 64) and tags.tolist() == [0.0, 1.0, 1.0]
    out = plugin.build_objective(cfg)(model, plugin.collate([ev[0], ev[0]]))
    assert out.loss.shape == (2,)
    g = torch.Generator().manual_seed(0)
    cond = plugin.conditions(cfg, 4, g)
    assert cond.shape == (4, 3) and set(cond.sum(1).tolist()) <= {1.0, 2.0}
    assert plugin.sample(model.eval(), cfg, 4, cond, g).shape == (4, 16000)
    vocabulary = ["genre---jazz", "genre---rock", "instrument---guitar"]  # tag i, kept
    assert plugin.describe_data(cfg) == {"condition": "tags", "vocabulary": vocabulary}


def test_bad_config_and_missing_weights(plugin, tmp_path):
    from layersync.assets import AssetError
    from layersync.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.on_eror"):
        resolve(plugin, preset="demo", overrides=["data.on_eror=skip"])
    missing = tmp_path / "MSD_musicnn" / ".index"
    cfg = resolve(
        plugin, preset="demo", overrides=[*TINY, "metric.fad=on", f"metric.weights={missing}"]
    )
    with pytest.raises(AssetError, match=r"MSD_musicnn/\.index: cannot read"):
        plugin.check_assets(cfg)  # fad=on: the metric's weights are checked before step 1
    cfg = resolve(plugin, preset="demo", overrides=[*TINY, f"metric.weights={missing}"])
    assert plugin.check_assets(cfg) is None
    model = plugin.build_model(cfg)  # fad=auto: training goes on, FAD skipped with a warning
    with pytest.warns(UserWarning, match="FAD skipped: .*cannot read"):
        assert plugin.evaluate(model, cfg, tmp_path, torch.Generator()) == {}
    cfg = resolve(plugin, preset="demo", overrides=[*TINY, "metric.embedding=clap"])
    with pytest.raises(
        ValueError, match=r"metric.embedding = .clap.: choose one of musicnn-msd, vggish"
    ):
        plugin.evaluate(model, cfg, tmp_path, torch.Generator())
    cfg = resolve(plugin, preset="demo", overrides=[*TINY, "model.patch_size=3"])
    with pytest.raises(
        ValueError, match=r"model\.patch_size = 3 does not divide the 128 mel frames"
    ):
        plugin.build_model(cfg)


@pytest.mark.weights
def test_fad_separates_real_from_noise(plugin):
    """FAD(eval vs train clips) is far below FAD(white noise vs train clips)."""
    _musicnn_or_skip()
    from layersync_audio.embedded import EmbeddedAudio
    from layersync_audio.fad import embedding_stats, fad, load_embedding

    embed = load_embedding("musicnn-msd")
    train = torch.from_numpy(EmbeddedAudio("train", per_family=2).waves)
    evals = torch.from_numpy(EmbeddedAudio("eval", per_family=1).waves)
    noise = torch.rand(8, 32000, generator=torch.Generator().manual_seed(0)) - 0.5
    s_train = embedding_stats(embed, [train], 16000)
    assert s_train.n == 16  # one 3-s (repeat-padded) patch per 2-s clip
    real, white = (
        fad(s_train, embedding_stats(embed, [evals], 16000)),
        fad(s_train, embedding_stats(embed, [noise], 16000)),
    )
    print(f"FAD eval vs train {real:.2f}, white noise vs train {white:.2f}")
    assert 0 < real < white / 5, (real, white)
    # 32 kHz input is resampled to the network's 16 kHz: same statistics up to resampling error
    up = torch.nn.functional.interpolate(evals[:, None], scale_factor=2, mode="linear")[:, 0]
    assert fad(s_train, embedding_stats(embed, [up], 32000)) == pytest.approx(real, rel=0.2)


def test_declared_metric_follows_the_embedding(plugin):
    """FAD values compare only per network: the declared name carries it (eval and bench
    convergence read ``metrics_for``)."""
    from layersync.convergence import metric_direction
    from layersync.plugin import MetricSpec

    spec = plugin.metrics["fad_musicnn"]
    family = {
        "family_accuracy": MetricSpec(higher_is_better=True),
        "family_accuracy_real": MetricSpec(higher_is_better=None),
    }
    vggish = resolve(plugin, preset="demo", overrides=[*TINY, "metric.embedding=vggish"])
    assert plugin.metrics_for(vggish) == {"fad_vggish": spec, **family}
    assert plugin.metrics_for(resolve(plugin, preset="demo", overrides=TINY)) == {
        "fad_musicnn": spec,
        **family,
    }
    # the vggish run's primary metric is found, lower is better
    found = metric_direction(plugin, ["val_loss", "fad_vggish"], cfg=vggish)
    assert found == ("fad_vggish", False)


@pytest.mark.weights
def test_family_accuracy_reads_the_conditioning_class(plugin, tmp_path, monkeypatch):
    """evaluate's family_accuracy: samples that ARE real clips of their conditioning family score
    far above chance (as the real clips' leave-one-out yardstick), the same clips under a
    shifted family far below it; the FAD is computed from the same frames either way."""
    _musicnn_or_skip()
    from layersync_audio.embedded import EmbeddedAudio

    cfg = resolve(plugin, preset="demo", overrides=["metric.num_samples=32"])
    train = EmbeddedAudio("train", cfg.data.per_family)
    by_class = {k: torch.from_numpy(train.waves[train.labels == k]) for k in range(8)}

    def scores(shift: int) -> dict[str, float]:
        def real_clips(model, cfg, n, condition, generator):
            # sample i: clip i // 8 of its family (+ shift): the same 32 clips for every shift
            picks = [by_class[(int(c) + shift) % 8][i // 8] for i, c in enumerate(condition)]
            return torch.stack(picks)

        monkeypatch.setattr(type(plugin), "sample", staticmethod(real_clips))
        out = plugin.evaluate(None, cfg, tmp_path / f"s{shift}", torch.Generator().manual_seed(0))
        return out

    right, shifted = scores(0), scores(1)
    print(right, shifted)
    assert right["family_accuracy_real"] == shifted["family_accuracy_real"] > 0.4  # chance 0.125
    assert right["family_accuracy"] > 0.4 > 0.1 > shifted["family_accuracy"]
    assert right["fad_musicnn"] == pytest.approx(shifted["fad_musicnn"], rel=1e-6)


def test_family_reference_is_embedded_once_per_key(plugin, tmp_path, monkeypatch):
    """The real clips' vectors for the family centroids are computed once and read back from the
    cache (labels and float64 vectors exact); a different reference count is a new entry."""
    from layersync_audio import family
    from layersync_audio.plugin import family_reference

    monkeypatch.setenv("LAYERSYNC_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_vectors(embed, clips, count, rate):
        calls.append(count)
        g = torch.Generator().manual_seed(len(calls))
        return torch.randn(count, 5, generator=g, dtype=torch.float64), torch.arange(count) % 8

    monkeypatch.setattr(family, "reference_vectors", fake_vectors)
    cfg = resolve(plugin, preset="demo", overrides=[*TINY, "metric.reference_count=6"])
    first = family_reference(cfg, None)
    again = family_reference(cfg, None)
    assert calls == [6]
    assert torch.equal(first[0], again[0]) and first[0].dtype == torch.float64
    assert first[1].tolist() == [0, 1, 2, 3, 4, 5]
    family_reference(
        resolve(plugin, preset="demo", overrides=[*TINY, "metric.reference_count=7"]), None
    )
    assert calls == [6, 7]
