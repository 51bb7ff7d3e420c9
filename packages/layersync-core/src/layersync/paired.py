"""Paired per-seed statistics for A/B convergence runs: mean, 95% t-interval, verdict.

Both arms of a seed share the initial weights, the data order and the evaluation noise, so the
per-seed difference removes what the seeds have in common; the interval is Student's t on
those differences (n - 1 degrees of freedom). Gains are signed so that positive = LayerSync
better, whatever the metric's direction. With one seed there is no interval, and no claim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Curve = list[tuple[int, float]]

# Two-sided 95% quantiles t_{0.975}(df), df = 1..30; beyond, the Cornish-Fisher expansion.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


# --------------------------------------------------------------------------------------------
# One estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` paired values with its 95% t-interval (``lo``/``hi`` NaN when n < 2)."""

    n: int
    mean: float
    lo: float
    hi: float
    null: float = 0.0  # the value meaning "no difference" (0 for a gain, 1 for a speed-up)

    @property
    def detectable(self) -> bool:
        """True when the interval exists and excludes ``null``."""
        return self.n >= 2 and (self.lo > self.null or self.hi < self.null)

    def describe(self, scale: float = 1.0, unit: str = "", signed: bool = True) -> str:
        """``+2.10% (95% CI [+0.50, +3.70], n=3)`` plus the verdict when not detectable."""
        f = "{:+.2f}" if signed else "{:.2f}"
        text = f.format(self.mean * scale) + unit
        if self.n < 2:
            return f"{text} (n=1: no confidence interval, no detectable difference claimed)"
        text += f" (95% CI [{f.format(self.lo * scale)}, {f.format(self.hi * scale)}], n={self.n})"
        return (
            text
            if self.detectable
            else f"{text}: no detectable difference (CI includes {self.null:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detectable": self.detectable}


def estimate(values: Sequence[float], null: float = 0.0) -> Estimate:
    """Mean and 95% t-interval of ``values`` (one per seed)."""
    n = len(values)
    if n == 0:
        raise ValueError("no paired values to estimate from")
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(n, mean, math.nan, math.nan, null)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return Estimate(n, mean, mean - half, mean + half, null)


# --------------------------------------------------------------------------------------------
# Curves of both arms
# --------------------------------------------------------------------------------------------


def gain(vanilla: float, layersync: float, lower_is_better: bool) -> float:
    """Absolute gain of LayerSync over vanilla (positive = LayerSync better)."""
    return vanilla - layersync if lower_is_better else layersync - vanilla


def paired_seeds(curves: Mapping[str, Mapping[Any, Curve]]) -> list[Any]:
    """Seeds with a non-empty curve in both arms."""
    return [s for s, c in curves["vanilla"].items() if c and curves["layersync"].get(s)]


def paired_curve(
    curves: Mapping[str, Mapping[Any, Curve]], lower_is_better: bool = True
) -> list[tuple[int, Estimate, Estimate]]:
    """Per evaluation step every paired seed has: (step, absolute gain, relative gain)."""
    seeds = paired_seeds(curves)
    tables = {arm: {s: dict(curves[arm][s]) for s in seeds} for arm in ("vanilla", "layersync")}
    common = set.intersection(*(set(t) for arm in tables.values() for t in arm.values()))
    out = []
    for step in sorted(common):
        pairs = [(tables["vanilla"][s][step], tables["layersync"][s][step]) for s in seeds]
        absolute = [gain(v, ls, lower_is_better) for v, ls in pairs]
        relative = [
            g / abs(v) if v else math.nan for g, (v, _) in zip(absolute, pairs, strict=True)
        ]
        out.append((step, estimate(absolute), estimate(relative)))
    return out


def paired_summary(
    curves: Mapping[str, Mapping[Any, Curve]],
    lower_is_better: bool = True,
    steps_to_reach: Any = None,
) -> dict[str, Any]:
    """Final absolute/relative gain with CIs, the per-seed speed-up with its CI (when every
    seed's LayerSync arm reaches its vanilla final value), and the pre-registered check: is
    LayerSync better at the last two evaluations in every seed?"""
    per_step = paired_curve(curves, lower_is_better)
    if not per_step:
        raise ValueError("no evaluation step common to every seed of both arms")
    seeds = paired_seeds(curves)
    step, absolute, relative = per_step[-1]
    last_two = [s for s, _, _ in per_step[-2:]]
    better_everywhere = all(
        gain(dict(curves["vanilla"][s])[k], dict(curves["layersync"][s])[k], lower_is_better) > 0
        for s in seeds
        for k in last_two
    )
    summary: dict[str, Any] = {
        "seeds": [str(s) for s in seeds],
        "final_step": step,
        "final_gain": absolute.to_dict(),
        "final_relative_gain": relative.to_dict(),
        "last_two_steps": last_two,
        "better_at_last_two_in_every_seed": better_everywhere,
        "per_step": [
            {"step": k, "gain": a.to_dict(), "relative_gain": r.to_dict()} for k, a, r in per_step
        ],
    }
    if steps_to_reach is not None:
        speedups, missed = [], []
        for s in seeds:
            van = [p for p in curves["vanilla"][s] if p[0] <= step]
            ls = [p for p in curves["layersync"][s] if p[0] <= step]
            need = steps_to_reach(ls, van[-1][1], lower_is_better)
            if need:
                speedups.append(step / need)
            else:
                missed.append(str(s))
        summary["speedup"] = None if missed else estimate(speedups, null=1.0).to_dict()
        summary["speedup_not_reached_seeds"] = missed
    return summary


def from_dict(d: Mapping[str, Any]) -> Estimate:
    """An ``Estimate`` back from its ``to_dict`` (convergence.json)."""
    return Estimate(d["n"], d["mean"], d["lo"], d["hi"], d.get("null", 0.0))


def arm_band(curves: Mapping[Any, Curve]) -> list[tuple[int, float, float]]:
    """(step, lo, hi) of one arm's mean across seeds (95% t-interval), where n >= 2."""
    tables = [dict(c) for c in curves.values() if c]
    if len(tables) < 2:
        return []
    common = set.intersection(*(set(t) for t in tables))
    out = []
    for step in sorted(common):
        e = estimate([t[step] for t in tables])
        out.append((step, e.lo, e.hi))
    return out
