"""Representation analysis: linear CKA against the HSIC/Gram formula, the linear probe on
synthetic features, the pair heuristic, and ``layersync probe`` end to end on a tiny image run."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from layersync import config as config_lib
from layersync.pairs import LayerSyncHeuristicWarning, parse_pairs, validate_pairs
from layersync.probe import (
    cka_matrix,
    collect_features,
    decoder_start,
    linear_cka,
    pool_tokens,
    probe_accuracy,
    suggest_pair,
)

# --------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------


def cka_by_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Independent formula: HSIC(K, L) = tr(K H L H) / (n-1)^2 on Gram matrices K = X X^T."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return float(hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)))


def test_linear_cka_equals_the_hsic_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 7, generator=g)
    y = x[:, :5] @ torch.randn(5, 5, generator=g) + 0.7 * torch.randn(40, 5, generator=g)
    z = torch.randn(40, 9, generator=g)
    for a, b in ((x, y), (x, z), (y, z)):
        assert linear_cka(a, b) == pytest.approx(cka_by_hsic(a, b), abs=1e-10)
    assert 0.0 < linear_cka(x, z) < linear_cka(x, y) < 1.0


def test_linear_cka_invariances() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 6, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    moved = 3.0 * (x.double() @ q) + 5.0  # rotation, isotropic scale, offset
    assert linear_cka(x, moved) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_matrix_is_symmetric_with_unit_diagonal() -> None:
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(20, 4, generator=g) for _ in range(3)]
    m = cka_matrix(feats)
    for i in range(3):
        assert m[i][i] == 1.0
        for j in range(3):
            assert m[i][j] == pytest.approx(m[j][i])
            if i != j:
                assert m[i][j] == pytest.approx(cka_by_hsic(feats[i], feats[j]), abs=1e-10)
    cross = cka_matrix(feats[:2], feats)
    assert len(cross) == 2 and len(cross[0]) == 3
    assert cross[1][2] == pytest.approx(m[1][2])


# --------------------------------------------------------------------------------------------
# Linear probe and pooling
# --------------------------------------------------------------------------------------------


def test_probe_separable_features_are_perfect_and_random_labels_are_chance() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(150) % 3
    centres = 6.0 * torch.randn(3, 10, generator=g)
    x = centres[labels] + torch.randn(150, 10, generator=g)
    acc, std = probe_accuracy(x, labels, folds=5)
    assert acc == 1.0 and std == 0.0
    shuffled = labels[torch.randperm(150, generator=g)]
    noise = torch.randn(150, 10, generator=g)
    chance, _ = probe_accuracy(noise, shuffled, folds=5)
    assert chance < 0.55  # 3 classes: 1/3 expected, nothing to learn


def test_probe_needs_enough_samples() -> None:
    with pytest.raises(ValueError, match="too few"):
        probe_accuracy(torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1]), folds=5)


def test_pool_tokens_respects_the_mask() -> None:
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert pool_tokens(x, mask).tolist() == [[2.0, 3.0]]
    assert pool_tokens(x)[0].tolist() == pytest.approx([104.0 / 3, 106.0 / 3])


# --------------------------------------------------------------------------------------------
# Pair suggestion
# --------------------------------------------------------------------------------------------


def staged_cka(depth: int, decoder_from: int) -> list[list[float]]:
    """CKA with a decoder stage: blocks >= decoder_from are 0.95-similar to each other."""
    m = [[0.0] * depth for _ in range(depth)]
    for i in range(depth):
        for j in range(depth):
            if i == j:
                m[i][j] = 1.0
            elif i + 1 >= decoder_from and j + 1 >= decoder_from:
                m[i][j] = 0.95
            else:
                m[i][j] = max(0.2, 0.85 - 0.08 * abs(i - j))
    return m


def test_suggest_pair_uses_the_decoder_stage_and_the_probe_peak() -> None:
    cka = staged_cka(12, decoder_from=9)
    assert decoder_start(cka) == 9
    accuracy = [0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.72, 0.71, 0.75, 0.6, 0.5, 0.4]
    s = suggest_pair(cka, accuracy)
    assert (s.student, s.teacher) == (4, 7)  # 9 probes best but decodes; 7 is the best before
    assert any("decoder stage" in line for line in s.reasoning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerSyncHeuristicWarning)
        validate_pairs(parse_pairs(s.pair), 12)  # the suggestion passes the heuristic check
    # without probes: the deepest block before the decoder stage
    assert suggest_pair(cka).pair == "4<-8"


def test_suggest_pair_without_structure_follows_the_depth_rule() -> None:
    flat = [[0.99] * 28 for _ in range(28)]
    s = suggest_pair(flat)
    assert s.teacher == 23 and s.student == 12  # ceil(0.8 * 28), about half of it
    assert any("no stage structure" in line for line in s.reasoning)
    with pytest.raises(ValueError, match="too shallow"):
        suggest_pair([[1.0] * 3 for _ in range(3)])


# --------------------------------------------------------------------------------------------
# The image plugin's hook and the CLI
# --------------------------------------------------------------------------------------------

TINY_IMAGE = [
    "model.depth=4",
    "model.hidden_size=32",
    "model.num_heads=2",
    "train.steps=2",
    "train.batch_size=16",
    "train.device=cpu",
    "log.progress=false",
    "log.sample_count=4",
    "sampler.steps=2",
    "metric.fid=off",
]


def test_image_probe_forward_ignores_the_label_and_fixes_t() -> None:
    image = pytest.importorskip("layersync_image.plugin")
    plugin = image.plugin
    cfg = config_lib.resolve(plugin, overrides=TINY_IMAGE)
    torch.manual_seed(0)
    model = plugin.build_model(cfg).eval()
    ds = plugin.build_dataset(cfg, "eval")
    a = collect_features(plugin, cfg, model, ds, t=0.5, samples=20)
    assert len(a.blocks) == 4 and a.features[0].shape == (20, 32)
    every = collect_features(plugin, cfg, model, ds, t=0.5, batch_size=64)
    assert every.labels.tolist() == [int(ds[i][1]) for i in range(len(ds))]  # in dataset order
    x, y = plugin.collate([ds[i] for i in range(8)])
    from layersync.taps import FeatureTaps

    def tapped(labels: torch.Tensor, t: float) -> torch.Tensor:
        with FeatureTaps(model, ["blocks.2"]) as taps:
            plugin.probe_forward(model, cfg, (x, labels), t, torch.Generator().manual_seed(1))
        return taps.pop()["blocks.2"]

    assert torch.equal(tapped(y, 0.5), tapped((y + 3) % 10, 0.5))  # null label: y is unseen
    assert not torch.allclose(tapped(y, 0.5), tapped(y, 0.9))


def test_default_probe_forward_is_a_clear_error(toy_plugins: Path) -> None:
    from layersync.registry import load

    plugin = load("toy-image")
    with pytest.raises(NotImplementedError, match=r"toy-image.*probe_forward"):
        plugin.probe_forward(torch.nn.Linear(1, 1), None, None, 0.5)


@pytest.fixture
def image_run(plugin_dists, tmp_path: Path) -> Path:
    """A 2-step tiny image run, with the image plugin discoverable through the registry."""
    pytest.importorskip("layersync_image.plugin")
    from layersync.registry import load
    from layersync.train import train

    plugin_dists(
        "layersync-image", {"layersync.modalities": {"image": "layersync_image.plugin:plugin"}}, {}
    )
    plugin = load("image")
    cfg = config_lib.resolve(
        plugin, overrides=[*TINY_IMAGE, f"run.out_dir={tmp_path}", "run.name=tiny"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerSyncHeuristicWarning)
        return train(cfg, plugin)


def test_cli_probe_with_compare_and_suggestion(
    layersync_cli: Callable, image_run: Path, tmp_path: Path
) -> None:

    out = tmp_path / "probe"
    args = ["probe", "--run", str(image_run), "--compare", str(image_run), "--samples", "60"]
    done = layersync_cli(*args, "--suggest-pairs", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "suggested pair" in done.output
    report = json.loads((out / "probe.json").read_text())
    assert report["t"] == 0.5 and "Kornblith" in report["cka_kind"]
    runs = list(report["runs"].values())
    assert len(runs) == 2 and runs[0]["samples"] == 60
    for r in runs:
        assert len(r["accuracy"]) == 4 and all(0.0 <= a <= 1.0 for a in r["accuracy"])
        assert [r["cka"][i][i] for i in range(4)] == [1.0] * 4
    # the same run on the same samples and noise: identical numbers, cross-CKA = self-CKA
    assert runs[0]["accuracy"] == runs[1]["accuracy"]
    cross = report["cross_cka"]
    for i in range(4):
        for j in range(4):
            assert cross[i][j] == pytest.approx(runs[0]["cka"][i][j], abs=1e-9)
    student, teacher = map(int, report["suggestion"]["pair"].split("<-"))
    assert 1 < student < teacher <= 4
    assert (out / "probe.png").stat().st_size > 1000


def test_plots_without_matplotlib_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from layersync.plots import PlotsUnavailable, plot_probe

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(PlotsUnavailable, match=r"pip install 'layersync-core\[plots\]'"):
        plot_probe({"a": {"accuracy": [0.5], "cka": [[1.0]]}}, Path("unused.png"))


def test_suggest_pair_when_the_decoder_stage_starts_too_early() -> None:
    s = suggest_pair(staged_cka(6, decoder_from=4))
    assert s.pair == "3<-5"  # depth rule alone: teacher ceil(0.8 * 6), student 2.5 -> deeper
    assert any("leaves no room" in line for line in s.reasoning)


def test_cli_probe_without_labels_gives_cka_and_a_pair_and_says_why(
    layersync_cli: Callable, image_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``probe_forward`` may return labels=None (unlabelled data, text conditions): CKA and the
    pair suggestion still come out (the same CKA as with labels), the linear probe does not."""
    from layersync.probe import NO_LABELS

    args = ["probe", "--run", str(image_run), "--samples", "40", "--suggest-pairs"]
    with_labels = layersync_cli(*args, "--out", str(tmp_path / "a"))
    assert with_labels.exit_code == 0, with_labels.output
    image = pytest.importorskip("layersync_image.plugin")
    real = type(image.plugin).probe_forward

    def unlabelled(self, model, cfg, batch, t, generator=None):
        _, mask = real(self, model, cfg, batch, t, generator)
        return None, mask

    monkeypatch.setattr(type(image.plugin), "probe_forward", unlabelled)
    done = layersync_cli(*args, "--out", str(tmp_path / "b"))
    assert done.exit_code == 0, done.output
    assert NO_LABELS in " ".join(done.stdout.split())
    a, b = (json.loads((tmp_path / d / "probe.json").read_text()) for d in "ab")
    run_a, run_b = (next(iter(r["runs"].values())) for r in (a, b))
    assert run_b["accuracy"] is None and run_b["note"] == NO_LABELS
    assert run_b["cka"] == run_a["cka"]  # the same forward, the same features
    student, teacher = map(int, b["suggestion"]["pair"].split("<-"))
    assert 1 <= student < teacher <= 4
    assert "no probe accuracies given" in " ".join(b["suggestion"]["reasoning"])
