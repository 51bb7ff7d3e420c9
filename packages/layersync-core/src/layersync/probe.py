"""Representation analysis of a trained backbone: per-block linear probes and linear CKA.

The labelled split of the plugin's dataset goes through the model once at a fixed time ``t``
(``Modality.probe_forward``: the data noised to ``t``, the null condition), every block is
tapped, and tokens are mean-pooled (valid tokens only) into one vector per sample and block.

- Linear probe: multinomial logistic regression on standardised features (torch, full-batch
  L-BFGS for a fixed number of iterations, small L2), scored by k-fold cross-validated accuracy.
- Linear CKA (Kornblith et al., 2019), the standard (biased-HSIC) estimator on column-centred
  features: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``.
- Pair suggestion: the paper's heuristic (teacher not in the last ~20% of blocks, student not
  in the first ~10%, a real gap; student about half the teacher's depth as in 8<-16) on top of
  the measured structure: the teacher is the best-probing block before the "decoder" stage
  (the trailing blocks that are CKA-similar to the last block).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layersync.plugin import Modality
from layersync.taps import FeatureTaps

CKA_KIND = "linear CKA (Kornblith et al. 2019), biased HSIC estimator on centred features"

# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


@dataclass
class BlockFeatures:
    """Mean-pooled features ``(N, D)`` of every block, and the labels ``(N,)`` (None when the
    plugin's ``probe_forward`` gives no labels: unlabelled data, text conditions)."""

    blocks: list[str]
    features: list[torch.Tensor]
    labels: torch.Tensor | None


def pool_tokens(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T, D)`` -> ``(B, D)``: mean over the valid tokens of ``mask`` ``(B, T)``."""
    x = x.float()
    if mask is None:
        return x.mean(1)
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


@torch.no_grad()
def collect_features(
    plugin: Modality,
    cfg: Any,
    model: nn.Module,
    dataset: Any,
    *,
    t: float = 0.5,
    samples: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> BlockFeatures:
    """Run ``samples`` items of ``dataset`` (a seeded subset; all when None) through ``model`` at
    time ``t`` and return the pooled output of every block of ``plugin.block_names``."""
    from layersync.train.data import to_device  # the engine's public batch mover

    device = next(model.parameters()).device
    model.eval()
    blocks = plugin.block_names(cfg, model)
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = sorted(order[: min(n, samples)] if samples else order)
    gen = torch.Generator(device).manual_seed(seed)
    feats: list[list[torch.Tensor]] = [[] for _ in blocks]
    labels = []
    taps = FeatureTaps(model, blocks, plugin.token_view(cfg))
    for start in range(0, len(chosen), batch_size):
        items = [dataset[i] for i in chosen[start : start + batch_size]]
        batch = to_device(plugin.collate(items), device)
        with taps:
            y, mask = plugin.probe_forward(model, cfg, batch, t, gen)
        out = taps.pop()
        for i, name in enumerate(blocks):
            feats[i].append(pool_tokens(out[name], mask).cpu())
        labels.append(None if y is None else torch.as_tensor(y).long().cpu())
    has_labels = all(y is not None for y in labels)
    return BlockFeatures(
        blocks, [torch.cat(f) for f in feats], torch.cat(labels) if has_labels else None
    )


# --------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two feature matrices ``(N, D1)``, ``(N, D2)`` over the same N samples."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    norm = (x.T @ x).norm() * (y.T @ y).norm()
    return float(cross / norm) if norm > 0 else 0.0


def cka_matrix(
    a: Sequence[torch.Tensor], b: Sequence[torch.Tensor] | None = None
) -> list[list[float]]:
    """``[i][j] = linear_cka(a[i], b[j])`` (``b`` defaults to ``a``; symmetric then)."""
    same = b is None
    b = a if b is None else b
    out = [[0.0] * len(b) for _ in a]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if same and j < i:
                out[i][j] = out[j][i]
            else:
                out[i][j] = 1.0 if same and i == j else linear_cka(x, y)
    return out


# --------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    steps: int = 100,
    l2: float = 1e-3,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Multinomial logistic regression on standardised ``x``; returns ``predict(x) -> labels``."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    layer = nn.Linear(z.shape[1], num_classes).double()
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(layer(z), y) + 0.5 * l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    @torch.no_grad()
    def predict(test: torch.Tensor) -> torch.Tensor:
        return layer((test.double() - mean) / std).argmax(1)

    return predict


def probe_accuracy(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    folds: int = 5,
    steps: int = 100,
    l2: float = 1e-3,
    seed: int = 0,
) -> tuple[float, float]:
    """k-fold cross-validated linear-probe accuracy (mean, std over folds)."""
    n = len(y)
    if n < 2 * folds:
        raise ValueError(f"linear probe: {n} samples are too few for {folds} folds")
    num_classes = int(y.max()) + 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    accs = []
    for k in range(folds):
        test = order[k::folds]
        train = torch.cat([order[j::folds] for j in range(folds) if j != k])
        predict = fit_logistic(x[train], y[train], num_classes, steps=steps, l2=l2)
        accs.append(float((predict(x[test]) == y[test]).double().mean()))
    mean = sum(accs) / folds
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / folds)
    return mean, std


# --------------------------------------------------------------------------------------------
# Pair suggestion
# --------------------------------------------------------------------------------------------


@dataclass
class Suggestion:
    """A proposed ``student<-teacher`` pair (1-based) and the reasoning behind it."""

    student: int
    teacher: int
    reasoning: list[str] = field(default_factory=list)

    @property
    def pair(self) -> str:
        return f"{self.student}<-{self.teacher}"


def decoder_start(cka: Sequence[Sequence[float]], threshold: float = 0.9) -> int:
    """1-based first block of the trailing run whose CKA with the last block is >= threshold."""
    depth = len(cka)
    start = depth
    while start > 1 and cka[start - 2][depth - 1] >= threshold:
        start -= 1
    return start


def suggest_pair(
    cka: Sequence[Sequence[float]],
    accuracy: Sequence[float] | None = None,
    *,
    threshold: float = 0.9,
) -> Suggestion:
    """Propose one pair from the CKA matrix (and probe accuracies when given); see the module
    docstring. Raises ValueError when the model is too shallow for any valid pair."""
    depth = len(cka)
    min_student = max(1, depth // 10) + 1  # not one of the very first blocks
    min_gap = max(2, depth // 10)
    max_teacher = math.ceil(0.8 * depth)  # not in the last ~20% (they decode)
    why = [
        f"{depth} blocks: teacher <= {max_teacher} (not the last 20%), student >= {min_student} "
        f"(not the first 10%), gap >= {min_gap}"
    ]
    dec = decoder_start(cka, threshold)
    first_teacher = min_student + min_gap
    if dec <= 1:
        why.append(
            f"every block has CKA >= {threshold} with the last block: no stage structure to use "
            "(an undertrained model?); only the depth rule applies"
        )
        dec = depth + 1
    elif dec <= first_teacher:
        why.append(
            f"blocks {dec}..{depth} have CKA >= {threshold} with the last block (a decoder "
            f"stage), but a teacher before block {dec} leaves no room for the student and the "
            "gap; only the depth rule applies"
        )
        dec = depth + 1
    elif dec <= max_teacher:
        why.append(
            f"blocks {dec}..{depth} have CKA >= {threshold} with the last block (a decoder "
            f"stage): the teacher comes before block {dec}"
        )
    else:
        why.append(
            f"the blocks CKA-similar (>= {threshold}) to the last one start after block {max_teacher}"
        )
    teachers = list(range(first_teacher, min(max_teacher, dec - 1) + 1))
    if not teachers:
        raise ValueError(f"a {depth}-block model is too shallow for a LayerSync pair")
    if accuracy is not None:
        teacher = max(teachers, key=lambda j: (round(accuracy[j - 1], 3), j))
        why.append(
            f"teacher {teacher}: the best linear probe among blocks {teachers[0]}..{teachers[-1]} "
            f"({accuracy[teacher - 1]:.3f}; deepest on ties)"
        )
    else:
        teacher = teachers[-1]
        why.append(f"teacher {teacher}: the deepest allowed block (no probe accuracies given)")
    students = list(range(min_student, teacher - min_gap + 1))
    student = min(students, key=lambda i: (abs(i - teacher / 2), -i))
    why.append(
        f"student {student}: about half the teacher's depth (the paper's 8<-16), "
        f"CKA({student}, {teacher}) = {cka[student - 1][teacher - 1]:.3f}"
    )
    if accuracy is not None:
        why.append(
            f"probe accuracy student {accuracy[student - 1]:.3f} -> teacher "
            f"{accuracy[teacher - 1]:.3f}: LayerSync pulls the student toward the better block"
        )
    return Suggestion(student, teacher, why)


# --------------------------------------------------------------------------------------------
# The analysis of one run
# --------------------------------------------------------------------------------------------


NO_LABELS = (
    "no linear probe: the plugin's probe_forward returned no labels (unlabelled data or text "
    "conditions); CKA and the pair suggestion only"
)


def analyse(
    feats: BlockFeatures, *, folds: int = 5, steps: int = 100, seed: int = 0
) -> dict[str, Any]:
    """Probe accuracies (when there are labels) and the CKA matrix of one run's features."""
    result: dict[str, Any] = {
        "blocks": feats.blocks,
        "samples": len(feats.features[0]),
        "cka": cka_matrix(feats.features),
    }
    if feats.labels is None:
        return {**result, "accuracy": None, "accuracy_std": None, "note": NO_LABELS}
    accs = [
        probe_accuracy(f, feats.labels, folds=folds, steps=steps, seed=seed) for f in feats.features
    ]
    classes = int(feats.labels.max()) + 1
    counts = torch.bincount(feats.labels, minlength=classes).double()
    return {
        **result,
        "classes": classes,
        "majority_baseline": float(counts.max() / counts.sum()),
        "accuracy": [a for a, _ in accs],
        "accuracy_std": [s for _, s in accs],
    }


# --------------------------------------------------------------------------------------------
# The report of ``layersync probe`` (one run, or two compared on the same samples)
# --------------------------------------------------------------------------------------------

PROBE_METHOD = (
    "multinomial logistic regression (torch L-BFGS, 100 iterations, L2 1e-3) on standardised "
    "mean-pooled block outputs; k-fold cross-validated accuracy"
)


@dataclass
class LoadedRun:
    """A run to probe: where it came from, its plugin, config, model (EMA) and checkpoint."""

    target: str
    run_dir: str
    checkpoint: str
    plugin: Modality
    cfg: Any
    model: nn.Module


def probe_report(
    runs: Sequence[LoadedRun],
    *,
    t: float = 0.5,
    samples: int | None = None,
    split: str = "eval",
    folds: int = 5,
    seed: int = 0,
    suggest_pairs: bool = False,
) -> dict[str, Any]:
    """Features of every run on the same samples, their analysis, the cross-CKA of two runs and
    (optionally) a pair suggestion for the first: the content of ``probe.json``."""
    from layersync.pairs import effective_layersync

    if split not in ("eval", "train"):
        raise ValueError(f"--split {split!r}: use eval or train")
    results: dict[str, dict[str, Any]] = {}
    features = []
    for run in runs:
        feats = collect_features(
            run.plugin,
            run.cfg,
            run.model,
            run.plugin.build_dataset(run.cfg, split),
            t=t,
            samples=samples,
            seed=seed,
        )
        result = analyse(feats, folds=folds, seed=seed)
        found = effective_layersync(run.cfg, run.plugin, run.model, warn=False)
        label = Path(run.run_dir).name
        while label in results:
            label += "'"
        result.update(
            run=run.target,
            checkpoint=run.checkpoint,
            modality=run.plugin.name,
            layersync_pairs=None if found is None else ",".join(map(str, found[0])),
        )
        results[label] = result
        features.append(feats.features)
    report: dict[str, Any] = {
        "t": t,
        "split": split,
        "folds": folds,
        "seed": seed,
        "cka_kind": CKA_KIND,
        "probe": PROBE_METHOD,
        "runs": results,
    }
    if len(features) == 2:
        report["cross_cka"] = cka_matrix(features[0], features[1])
    if suggest_pairs:
        first = next(iter(results.values()))
        s = suggest_pair(first["cka"], first["accuracy"])
        report["suggestion"] = {"pair": s.pair, "reasoning": s.reasoning}
    return report


def report_table(report: dict[str, Any]) -> Any:
    """The per-block table (probe accuracy, CKA with the last block) of a probe report."""
    from rich.table import Table

    results = report["runs"]
    labels = list(results)
    first = results[labels[0]]
    table = Table(
        title=f"layersync probe: t = {report['t']}, {first['samples']} {report['split']} samples"
    )
    table.add_column("block", justify="right")
    for label in labels:
        table.add_column(f"probe acc {label}", justify="right")
        table.add_column(f"CKA(block, last) {label}", justify="right")
    for b in range(max(len(r["blocks"]) for r in results.values())):
        row = [str(b + 1)]
        for label in labels:
            r = results[label]
            if b >= len(r["blocks"]):  # a shallower model in the comparison
                row += ["-", "-"]
                continue
            acc = (
                "-"
                if r["accuracy"] is None
                else (f"{r['accuracy'][b]:.3f} ± {r['accuracy_std'][b]:.3f}")
            )
            row += [acc, f"{r['cka'][b][-1]:.3f}"]
        table.add_row(*row)
    means = []
    for label in labels:
        acc = results[label]["accuracy"]
        means += ["-" if acc is None else f"{sum(acc) / max(1, len(acc)):.3f}", ""]
    table.add_row("mean", *means)
    return table


def notes(report: dict[str, Any]) -> list[str]:
    """Why a run has no linear probe, one line per such run."""
    return [f"{label}: {r['note']}" for label, r in report["runs"].items() if r.get("note")]


# --------------------------------------------------------------------------------------------
# Block diagnostics logged during training (rms/<block>, rel/<pair> next to cos/<pair>)
# --------------------------------------------------------------------------------------------


def diagnostics_curves(run_dir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{"rms": {block: curve}, "rel": {pair: curve}, "cos": {pair: curve}}`` from the train
    lines of a run's metrics.jsonl (empty dicts for a run that logged none, e.g. vanilla)."""
    import json

    out: dict[str, dict[str, list[tuple[int, float]]]] = {"rms": {}, "rel": {}, "cos": {}}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") != "train":
            continue
        for key, value in record.items():
            kind, _, name = key.partition("/")
            if kind in out and name:
                out[kind].setdefault(name, []).append((int(record["step"]), float(value)))
    return out
