"""``digit_accuracy``: whether class-conditional moving-digit samples show their digit.

Every frame (and every train-split digit) is cut to a 10x10 window centred on its intensity centre
of mass, so the position in the canvas does not matter; a logistic regression fitted on the
centred train digits scores each frame, and a clip's class is the argmax of its frames' mean
log-probabilities. On real eval clips it scores about 0.92 (chance: 0.10): a number for "the grid
shows recognisable digits", next to FVD, which I3D computes from Kinetics features.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from layersync_video.digits import digit_images

HALF = 5  # window half-size: 10x10 holds an 8x8 digit and its centring error


def centred_windows(frames: np.ndarray) -> np.ndarray:
    """(K, H, W) intensities in [0, 1] -> (K, 100) windows centred on each frame's mass."""
    k, h, w = frames.shape
    padded = np.pad(frames, ((0, 0), (HALF, HALF), (HALF, HALF)))
    yy, xx = np.mgrid[0:h, 0:w]
    mass = frames.sum((1, 2)) + 1e-6
    cy = np.round((frames * yy).sum((1, 2)) / mass).astype(int)
    cx = np.round((frames * xx).sum((1, 2)) / mass).astype(int)
    wins = [padded[i, cy[i] : cy[i] + 2 * HALF, cx[i] : cx[i] + 2 * HALF] for i in range(k)]
    return np.stack(wins).reshape(k, -1)


class DigitClassifier:
    """Logistic regression on centred windows of the train-split digits (deterministic)."""

    def __init__(self) -> None:
        from sklearn.linear_model import LogisticRegression

        images, labels = digit_images("train")
        self.model = LogisticRegression(max_iter=3000, C=0.5)
        self.model.fit(centred_windows(images / 255.0), labels)

    def predict_clips(self, clips: torch.Tensor) -> np.ndarray:
        """(N, 1, T, H, W) clips in [-1, 1] -> (N,) predicted digits."""
        x = ((clips[:, 0].float().clamp(-1, 1) + 1) / 2).cpu().numpy().astype(np.float64)
        n, t, h, w = x.shape
        logp = self.model.predict_log_proba(centred_windows(x.reshape(n * t, h, w)))
        return logp.reshape(n, t, -1).mean(1).argmax(1)


@functools.cache
def digit_classifier() -> DigitClassifier:
    """The classifier, fitted once per process (about a second on CPU) and shared by every
    evaluation of a run."""
    return DigitClassifier()


def digit_accuracy(clips: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of clips (N, 1, T, H, W) in [-1, 1] classified as their conditioning digit."""
    pred = digit_classifier().predict_clips(clips)
    return float((pred == labels.cpu().numpy()).mean())
