"""T2M evaluator networks equal MDM's copies under random state dicts; the trained evaluator.

``fixtures/t2m_evaluator.npz`` was made once with GuyTevet/motion-diffusion-model's
``data_loaders/humanml/networks/modules.py`` (unchanged):

    movement_encoder = MovementConvEncoder(259, 32, 16)
    motion_encoder = MotionEncoderBiGRUCo(16, 24, 8, "cpu")
    text_encoder = TextEncoderBiGRUCo(300, 15, 24, 8, "cpu")
    g = Generator().manual_seed(321); for each net in that order, for k in sorted(state_dict):
        0.1 * randn(shape, g); eval mode
    g = Generator().manual_seed(5); motions = randn(3, 40, 263, g); m_lens = [40, 36, 24]
    words = randn(3, 7, 300, g); pos = randn(3, 7, 15, g); cap_lens = [7, 5, 3]
    movements = movement_encoder(motions[..., :-4]); motion_emb = motion_encoder(movements, m_lens // 4)
    text_emb = text_encoder(words, pos, cap_lens)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layersync_motion.evaluator import (
    MotionEncoderBiGRUCo,
    MovementConvEncoder,
    TextEncoderBiGRUCo,
    contrastive_loss,
)

REF = np.load(Path(__file__).parent / "fixtures" / "t2m_evaluator.npz")


def networks():
    nets = {
        "movement_encoder": MovementConvEncoder(259, 32, 16),
        "motion_encoder": MotionEncoderBiGRUCo(16, 24, 8),
        "text_encoder": TextEncoderBiGRUCo(300, 15, 24, 8),
    }
    g = torch.Generator().manual_seed(321)
    for name, net in nets.items():
        sd = net.state_dict()
        assert sorted(sd) == REF[f"{name}_keys"].tolist()
        assert [str(tuple(sd[k].shape)) for k in sorted(sd)] == REF[f"{name}_shapes"].tolist()
        for k in sorted(sd):
            sd[k] = 0.1 * torch.randn(sd[k].shape, generator=g)
        net.load_state_dict(sd, strict=True)
        net.eval()
    return nets


def test_t2m_networks_equal_mdm():
    nets = networks()
    t = {k: torch.from_numpy(REF[k]) for k in ("motions", "m_lens", "words", "pos", "cap_lens")}
    with torch.no_grad():
        movements = nets["movement_encoder"](t["motions"][..., :-4])
        motion = nets["motion_encoder"](movements, t["m_lens"] // 4)
        text = nets["text_encoder"](t["words"], t["pos"], t["cap_lens"])
        # any order of lengths gives the same per-sample embeddings (we sort internally)
        perm = torch.tensor([2, 0, 1])
        motion_perm = nets["motion_encoder"](movements[perm], (t["m_lens"] // 4)[perm])
    np.testing.assert_allclose(movements.numpy(), REF["movements"], atol=1e-5)
    np.testing.assert_allclose(motion.numpy(), REF["motion_emb"], atol=1e-5)
    np.testing.assert_allclose(text.numpy(), REF["text_emb"], atol=1e-5)
    np.testing.assert_allclose(motion_perm.numpy(), REF["motion_emb"][[2, 0, 1]], atol=1e-5)


def test_contrastive_loss_formula():
    text = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    motion = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 7.0]])
    # positives: d = 0, 0, 1 -> mean d² = 1/3; negatives (shift 1): motion i vs text i-1
    neg_d = torch.tensor([np.hypot(6, 8), 5.0, np.hypot(3, 3)])
    expect = 1 / 3 + ((10 - neg_d).clamp_min(0) ** 2).mean()
    assert float(contrastive_loss(text, motion, 1)) == pytest.approx(float(expect), rel=1e-6)
    valid = torch.tensor([True, False, True])
    expect_valid = 1 / 3 + ((10 - neg_d[[0, 2]]).clamp_min(0) ** 2).mean()
    assert float(contrastive_loss(text, motion, 1, neg_valid=valid)) == pytest.approx(
        float(expect_valid), rel=1e-6
    )
