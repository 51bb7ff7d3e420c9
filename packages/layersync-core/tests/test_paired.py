"""Paired per-seed statistics of bench convergence on synthetic curves with known answers."""

from __future__ import annotations

import math

import pytest

from layersync import paired
from layersync.convergence import report, summarize


def test_t_quantiles_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 41), 60, 120, 500]:
        assert paired.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4), df


def test_estimate_is_the_t_interval_formula() -> None:
    e = paired.estimate([1.0, 2.0, 3.0, 6.0])
    sd = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)
    half = 3.1824 * sd / 2
    assert (e.n, e.mean) == (4, 3.0)
    assert (e.lo, e.hi) == pytest.approx((3.0 - half, 3.0 + half))
    assert e.lo < 0 and not e.detectable  # half-width 3.44 > mean 3: the interval holds 0
    assert not paired.estimate([4.0]).detectable and math.isnan(paired.estimate([4.0]).lo)


def _curves(deltas: list[float], lower: bool = True) -> dict:
    """Seed s: vanilla 10 + s - step/100, LayerSync the same minus deltas[s] (a gain)."""
    sign = 1.0 if lower else -1.0
    steps = (100, 200, 300, 400)
    van = {s: [(k, sign * (10.0 + s - k / 100)) for k in steps] for s in range(len(deltas))}
    ls = {s: [(k, v - sign * d) for k, v in van[s]] for s, d in enumerate(deltas)}
    return {"vanilla": van, "layersync": ls}


@pytest.mark.parametrize("lower", [True, False])
def test_a_known_gain_is_found_with_its_interval(lower: bool) -> None:
    deltas = [0.5, 0.7, 0.6]
    curves = _curves(deltas, lower)
    _, s = summarize(curves, lower_is_better=lower)
    p = s["paired"]
    final = p["final_gain"]
    assert final["n"] == 3 and final["mean"] == pytest.approx(0.6)
    half = 4.3027 * 0.1 / math.sqrt(3)  # sd of (0.5, 0.7, 0.6) is 0.1
    assert (final["lo"], final["hi"]) == pytest.approx((0.6 - half, 0.6 + half))
    assert final["detectable"] and p["better_at_last_two_in_every_seed"]
    rel = [d / abs(10 + k - 4) for k, d in enumerate(deltas)]  # vanilla final = 6 + seed
    assert p["final_relative_gain"]["mean"] == pytest.approx(sum(rel) / 3)
    assert [row["step"] for row in p["per_step"]] == [100, 200, 300, 400]
    # slope 1/100 per step: a gain d reaches the vanilla final 100 * d steps earlier
    speedups = [400 / (400 - 100 * d) for d in deltas]
    assert p["speedup"]["mean"] == pytest.approx(sum(speedups) / 3)
    assert p["speedup"]["detectable"]  # the interval excludes 1 (no speed-up)


def test_no_detectable_difference_when_the_interval_includes_zero() -> None:
    curves = _curves([0.4, -0.3, 0.1])
    result = _result(curves)
    p = result["summary"]["paired"]
    assert p["final_gain"]["lo"] < 0 < p["final_gain"]["hi"] and not p["final_gain"]["detectable"]
    assert p["better_at_last_two_in_every_seed"] is False
    _, lines = report(result, _out())
    text = "\n".join(lines)
    assert "no detectable difference (CI includes 0)" in text
    assert "in every seed: no" in text


def test_one_seed_claims_nothing() -> None:
    result = _result(_curves([0.5]))
    _, lines = report(result, _out())
    assert "n=1: no confidence interval, no detectable difference claimed" in "\n".join(lines)
    assert not result["summary"]["paired"]["final_gain"]["detectable"]


def test_a_detectable_gain_is_reported_with_its_interval() -> None:
    _, lines = report(_result(_curves([0.5, 0.7, 0.6])), _out())
    final = next(line for line in lines if line.startswith("final gain"))
    assert "95% CI [" in final and "n=3" in final and "no detectable" not in final
    assert any(line.startswith("speed-up to the vanilla final value") for line in lines)


def test_arm_band_is_the_interval_of_the_mean() -> None:
    band = paired.arm_band({0: [(1, 1.0), (2, 2.0)], 1: [(1, 3.0), (2, 2.0)]})
    half = 12.7062 * math.sqrt(2) / math.sqrt(2)
    assert band[0] == pytest.approx((1, 2.0 - half, 2.0 + half))
    assert band[1] == pytest.approx((2, 2.0, 2.0))
    assert paired.arm_band({0: [(1, 1.0)]}) == []


def _out():
    from pathlib import Path

    return Path("out")


def _result(curves: dict) -> dict:
    means, summary = summarize(curves, lower_is_better=True)
    seeds = list(curves["vanilla"])
    return {
        "metric": "val_loss",
        "lower_is_better": True,
        "seeds": seeds,
        "mean": means,
        "summary": summary,
    }
