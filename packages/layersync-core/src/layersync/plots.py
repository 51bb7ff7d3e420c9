"""Figures for the evidence tools (needs matplotlib: ``pip install 'layersync-core[plots]'``).

Every function writes one PNG with the non-interactive Agg backend and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PLOTS_HINT = "plots need matplotlib: pip install 'layersync-core[plots]'"


class PlotsUnavailable(ImportError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a clear error naming the extra."""
    try:
        import matplotlib
    except ImportError as e:
        raise PlotsUnavailable(PLOTS_HINT) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------
# layersync probe
# --------------------------------------------------------------------------------------------


def plot_probe(runs: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Probe accuracy per block (one curve per run) and one CKA heatmap per run, side by side.

    ``runs`` maps a label to ``probe.analyse`` output (``accuracy``, ``accuracy_std``, ``cka``).
    """
    plt = pyplot()
    n = len(runs)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.6 * (n + 1), 4.0), squeeze=False)
    ax = axes[0][0]
    labelled = {label: r for label, r in runs.items() if r.get("accuracy") is not None}
    for label, r in labelled.items():
        x = list(range(1, len(r["accuracy"]) + 1))
        ax.errorbar(
            x, r["accuracy"], yerr=r.get("accuracy_std"), marker="o", capsize=3, label=label
        )
    first = next(iter(runs.values()))
    if "majority_baseline" in first:
        ax.axhline(first["majority_baseline"], color="grey", ls=":", lw=1, label="majority class")
    ax.set_xlabel("block")
    ax.set_ylabel("linear-probe accuracy")
    ax.set_title("linear probe per block")
    ax.set_xticks(list(range(1, len(first["cka"]) + 1)))
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    else:  # probe_forward gave no labels: say so where the curves would be
        ax.text(0.5, 0.5, "no labels: no linear probe", ha="center", transform=ax.transAxes)
    for k, (label, r) in enumerate(runs.items(), start=1):
        ax = axes[0][k]
        cka = r["cka"]
        im = ax.imshow(cka, vmin=0, vmax=1, cmap="viridis", origin="lower")
        depth = len(cka)
        ticks = list(range(depth))
        ax.set_xticks(ticks, [str(i + 1) for i in ticks])
        ax.set_yticks(ticks, [str(i + 1) for i in ticks])
        ax.set_xlabel("block")
        ax.set_ylabel("block")
        ax.set_title(f"linear CKA: {label}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# layersync bench convergence
# --------------------------------------------------------------------------------------------


def plot_convergence(
    curves: Mapping[str, Mapping[int, Sequence[tuple[int, float]]]],
    path: Path,
    metric: str,
    means: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    lower_is_better: bool = True,
    bands: Mapping[str, Sequence[tuple[int, float, float]]] | None = None,
) -> Path:
    """Metric vs steps: one thin line per (arm, seed), the arm's mean in bold.

    ``curves[arm][seed]`` is a list of ``(step, value)``; ``means[arm]`` the mean curve;
    ``bands[arm]`` ``(step, lo, hi)`` the 95% interval of that mean (shaded, n >= 2 seeds).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"vanilla": "tab:blue", "layersync": "tab:orange"}
    for i, (arm, seeds) in enumerate(curves.items()):
        color = colors.get(arm, f"C{i}")
        for seed, points in seeds.items():
            steps, values = zip(*points, strict=True) if points else ((), ())
            ax.plot(steps, values, color=color, lw=0.9, alpha=0.45, label=f"{arm} seed {seed}")
        if means and means.get(arm):
            steps, values = zip(*means[arm], strict=True)
            ax.plot(steps, values, color=color, lw=2.6, marker="o", ms=3, label=f"{arm} mean")
        if bands and bands.get(arm):
            steps, lo, hi = zip(*bands[arm], strict=True)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.18, lw=0, label=f"{arm} 95% CI")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
    ax.set_title(f"convergence: {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_diagnostics(runs: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Block diagnostics vs steps: residual RMS per tapped block (left), relative update
    ``||h_teacher - h_student|| / ||h_student||`` (middle) and cosine (right) per pair;
    ``runs[label]`` is ``layersync.probe.diagnostics_curves`` of one run."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    titles = {"rms": "block output RMS", "rel": "relative update (teacher vs student)",
              "cos": "cos(student, teacher)"}  # fmt: skip
    styles = ["-", "--", ":", "-."]
    for ax, kind in zip(axes, ("rms", "rel", "cos"), strict=True):
        for r, (label, curves) in enumerate(runs.items()):
            for i, (name, points) in enumerate(sorted(curves[kind].items())):
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, styles[r % 4], color=f"C{i}", label=f"{label} {name}")
        ax.set_title(titles[kind], fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
