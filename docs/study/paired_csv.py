"""The paired per-seed gain of curves kept as CSV (``arm,seed,step,value``, the format of
``convergence.csv``), several files joined: a markdown table on stdout.

    .venv/bin/python docs/study/paired_csv.py docs/study/data/B-lam0.3-lr1e-3-seed*.csv \
        [--plot docs/study/images/B-lam0.3-lr1e-3-convergence.png]

Stage B's seeds were trained in different sessions whose run directories are gone; their
curves are kept under ``docs/study/data/`` and read back here with the same statistics as
``bench convergence`` (``layersync.paired``: relative gain per seed, positive = LayerSync
better, mean with a t-based 95% CI over seeds). Rows with seed ``mean`` are skipped. ``--plot``
draws them as ``bench convergence`` does (each seed, the arm's mean and its 95% band).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

from layersync.convergence import mean_curve
from layersync.paired import arm_band, paired_curve, paired_summary


def read_curves(paths: list[Path]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    curves: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for path in paths:
        with path.open() as f:
            for row in csv.DictReader(f):
                if row["seed"] == "mean":
                    continue
                curve = curves[row["arm"]].setdefault(row["seed"], [])
                curve.append((int(row["step"]), float(row["value"])))
    return {arm: {s: sorted(c) for s, c in seeds.items()} for arm, seeds in curves.items()}


def _pct(e) -> str:
    if e.n < 2:
        return f"{100 * e.mean:+.2f}% (n=1)"
    return f"{100 * e.mean:+.2f}% [{100 * e.lo:+.2f}, {100 * e.hi:+.2f}] (n={e.n})"


def plot(curves: dict[str, dict[str, list[tuple[int, float]]]], out: Path) -> None:
    from layersync.plots import plot_convergence

    means = {arm: mean_curve(list(seeds.values())) for arm, seeds in curves.items()}
    bands = {arm: arm_band(seeds) for arm, seeds in curves.items()}
    print(f"wrote {plot_convergence(curves, out, 'val_loss', means, True, bands)}")


def main(paths: list[Path], plot_to: Path | None = None) -> None:
    curves = read_curves(paths)
    seeds = sorted(curves["vanilla"])
    print("| step | " + " | ".join(f"vanilla s{s} | LayerSync s{s}" for s in seeds)
          + " | paired gain (95% CI) |")  # fmt: skip
    print("|---" * (2 + 2 * len(seeds)) + "|")
    for step, _, relative in paired_curve(curves):
        values = [dict(curves[a][s])[step] for s in seeds for a in ("vanilla", "layersync")]
        print(f"| {step} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {_pct(relative)} |")
    summary = paired_summary(curves)
    print(
        f"\nfinal step {summary['final_step']}, seeds {summary['seeds']}: LayerSync lower at "
        f"the last two evaluations {summary['last_two_steps']} in every seed: "
        f"{'yes' if summary['better_at_last_two_in_every_seed'] else 'no'}"
    )

    if plot_to is not None:
        plot(curves, plot_to)


if __name__ == "__main__":
    args = sys.argv[1:]
    to = None
    if "--plot" in args:
        i = args.index("--plot")
        to = Path(args[i + 1])
        del args[i : i + 2]
    main([Path(p) for p in args], to)
