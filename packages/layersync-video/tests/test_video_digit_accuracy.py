"""digit_accuracy: the centred-window digit classifier reads real moving-digit clips, and only
when the label is the clip's digit."""

from __future__ import annotations

import numpy as np
import torch

from layersync_video.digit_accuracy import (
    DigitClassifier,
    centred_windows,
    digit_accuracy,
    digit_classifier,
)
from layersync_video.digits import MovingDigits


def real_clips(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = MovingDigits("eval", seed=1)
    clips, labels = zip(*(ds[i] for i in range(n)), strict=True)
    return torch.stack(clips), torch.stack(labels)


def test_real_eval_clips_score_high_and_wrong_labels_low():
    clips, labels = real_clips(200)
    assert clips.shape == (200, 1, 16, 16, 16)
    # measured 0.915 on these 200 (chance 0.10)
    assert digit_accuracy(clips, labels) > 0.85
    assert digit_accuracy(clips, (labels + 1) % 10) < 0.10
    # a blank clip is one class for every label: 1 in 10 at most
    blank = -torch.ones(10, 1, 16, 16, 16)
    assert digit_accuracy(blank, torch.arange(10)) == 0.1
    # fitted once per process: every evaluation of a run reuses it
    assert digit_classifier() is digit_classifier()


def test_windows_do_not_depend_on_the_position():
    digit = np.zeros((16, 16))
    digit[2:7, 3:5] = 1.0  # a bar, then the same bar moved by (6, 9)
    moved = np.roll(digit, (6, 9), axis=(0, 1))
    a, b = centred_windows(np.stack([digit, moved]))
    np.testing.assert_array_equal(a, b)
    clips = torch.from_numpy(np.stack([digit, moved])[:, None, None].repeat(4, 2)) * 2 - 1
    pred = DigitClassifier().predict_clips(clips)
    assert pred[0] == pred[1]
