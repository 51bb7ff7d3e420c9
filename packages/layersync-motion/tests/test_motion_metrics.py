"""T2M/MDM metrics equal MDM's code on stored random embeddings.

``fixtures/mdm_metrics.npz`` was made once with MDM's own ``data_loaders/humanml/utils/metrics.py``
(GuyTevet/motion-diffusion-model, unchanged) and the loop of ``eval/eval_humanml.py``'s
``evaluate_matching_score``:

    rng = np.random.RandomState(0); D, N = 16, 100
    motion = rng.randn(N, D); text = motion + 3.0 * rng.randn(N, D)
    gt = rng.randn(120, D) * 1.1 + 0.3; mm = rng.randn(6, 30, D)          (all float32)
    per batch of 32 (3 batches; the last 4 samples dropped):
        dist = euclidean_distance_matrix(text_b, motion_b); trace += dist.trace()
        topk += calculate_top_k(np.argsort(dist, 1), 3).sum(0)
    matching_score = trace / 96; r_precision = topk / 96
    fid = calculate_frechet_distance(*calculate_activation_statistics(gt),
                                     *calculate_activation_statistics(motion))
    np.random.seed(7); diversity = calculate_diversity(motion, 50)
    np.random.seed(8); multimodality = calculate_multimodality(mm, 10)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layersync_motion.metrics import diversity, fid, matching, mean_interval, multimodality

REF = np.load(Path(__file__).parent / "fixtures" / "mdm_metrics.npz")


def test_matching_and_r_precision_equal_mdm():
    mm_dist, r_prec = matching(REF["text"], REF["motion"])
    assert mm_dist == pytest.approx(float(REF["matching_score"]), rel=1e-6)
    np.testing.assert_allclose(r_prec, REF["r_precision"], rtol=0, atol=1e-12)
    assert 0 < r_prec[0] < r_prec[1] < r_prec[2] < 1  # an informative fixture


def test_fid_equals_mdm():
    assert fid(REF["gt"], REF["motion"]) == pytest.approx(float(REF["fid"]), rel=1e-6)
    assert fid(REF["gt"], REF["gt"]) == pytest.approx(0.0, abs=1e-6)


def test_seeded_pair_draws_equal_mdm_after_np_random_seed():
    assert diversity(REF["motion"], 50, seed=7) == pytest.approx(
        float(REF["diversity_seed7_50"]), rel=1e-6
    )
    assert multimodality(REF["mm"], 10, seed=8) == pytest.approx(
        float(REF["multimodality_seed8_10"]), rel=1e-6
    )


def test_intervals_and_errors():
    mean, half = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(1.96 * np.std([1, 2, 3, 4]) / 2)
    with pytest.raises(ValueError, match="at least one full batch of 32, got 10"):
        matching(REF["text"][:10], REF["motion"][:10])
    with pytest.raises(ValueError, match="more than 300 samples, got 100"):
        diversity(REF["motion"], 300)
