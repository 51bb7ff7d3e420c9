"""KID against torchmetrics' implementation on fixed features, and its basic properties.

Fixture ``fixtures/kid_torchmetrics.npz`` recipe (a throwaway install, not a dependency)::

    pip install --target /tmp/tm --no-deps torchmetrics==1.9.0 lightning-utilities==0.15.3
    PYTHONPATH=/tmp/tm python - <<'PY'
    import numpy as np, torch
    from torchmetrics.image.kid import poly_mmd
    rng = np.random.default_rng(14)
    x = rng.normal(0.3, 1.0, (60, 16)).astype(np.float32)
    y = rng.normal(0.0, 1.2, (50, 16)).astype(np.float32)
    ix = np.stack([rng.choice(60, 20, replace=False) for _ in range(7)])
    iy = np.stack([rng.choice(50, 20, replace=False) for _ in range(7)])
    vals = np.array([float(poly_mmd(torch.from_numpy(x[a]).double(),
                                    torch.from_numpy(y[b]).double())) for a, b in zip(ix, iy)])
    np.savez("kid_torchmetrics.npz", x=x, y=y, ix=ix, iy=iy, mmd2=vals)
    PY
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layersync.metrics import kid as kid_lib

FIXTURE = Path(__file__).parent / "fixtures" / "kid_torchmetrics.npz"


def test_per_subset_mmd_equals_torchmetrics() -> None:
    with np.load(FIXTURE) as f:
        x, y, ix, iy, want = f["x"], f["y"], f["ix"], f["iy"], f["mmd2"]
    got = kid_lib.kid_from_indices(x, y, ix, iy)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the per-subset path (sets too large for one kernel matrix) gives the same numbers
    old = kid_lib.FULL_GRAM_MAX
    try:
        kid_lib.FULL_GRAM_MAX = 10
        np.testing.assert_allclose(kid_lib.kid_from_indices(x, y, ix, iy), want, rtol=1e-10)
    finally:
        kid_lib.FULL_GRAM_MAX = old


def test_mean_and_std_are_over_subsets_and_unbiased_near_zero_for_one_distribution() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(300, 8))
    r = kid_lib.kernel_inception_distance(a, b, subset_size=100, subsets=50, seed=3)
    ix, iy = kid_lib.subset_indices(400, 300, 100, 50, 3)
    values = kid_lib.kid_from_indices(a, b, ix, iy)
    assert (r.mean, r.std) == (pytest.approx(values.mean()), pytest.approx(values.std()))
    assert r.subset_size == 100 and r.subsets == 50
    assert abs(r.mean) < 3 * r.std  # same distribution: unbiased, centred on 0
    shifted = kid_lib.kernel_inception_distance(a + 1.0, b, subset_size=100, subsets=50)
    assert shifted.mean > 5 * shifted.std > 0
    # m is capped by the smaller set; a set of one sample is refused
    assert (
        kid_lib.kernel_inception_distance(a, b[:30], subset_size=100, subsets=2).subset_size == 30
    )
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid_lib.kernel_inception_distance(a, b[:1])
