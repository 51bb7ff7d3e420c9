"""family_accuracy: nearest-centroid accuracy in the FAD embedding space (layersync_audio.family)."""

from __future__ import annotations

import torch

from layersync_audio import family


def brute_force_leave_one_out(vectors: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    right = 0
    for i in range(len(vectors)):
        keep = torch.arange(len(vectors)) != i
        centres = family.centroids(vectors[keep], labels[keep], classes)
        right += int(family.nearest(vectors[i : i + 1], centres)[0] == labels[i])
    return right / len(vectors)


def test_centroids_and_accuracy_by_hand() -> None:
    vectors = torch.tensor(
        [[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]], dtype=torch.float64
    )
    labels = torch.tensor([0, 0, 1, 1])
    centres = family.centroids(vectors, labels, 3)
    assert centres[:2].tolist() == [[1.0, 0.0], [11.0, 10.0]] and centres[2].isnan().all()
    probes = torch.tensor([[1.0, 1.0], [9.0, 9.0], [6.5, 5.0]], dtype=torch.float64)
    assert family.nearest(probes, centres).tolist() == [0, 1, 1]  # the empty class never wins
    assert family.accuracy(probes, torch.tensor([0, 0, 1]), centres) == 2 / 3


def test_leave_one_out_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    vectors = torch.randn(40, 6, generator=g, dtype=torch.float64) + labels[:, None] * 0.7
    fast = family.leave_one_out_accuracy(vectors, labels, 4)
    assert fast == brute_force_leave_one_out(vectors, labels, 4)
    assert 0.25 < fast < 1.0  # separable in part: above chance, not perfect


def test_a_singleton_class_is_never_its_own_centroid() -> None:
    vectors = torch.tensor([[0.0], [0.2], [5.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # clip 2 is alone in class 1: left out, class 1 has no centroid, so it is wrong
    assert family.leave_one_out_accuracy(vectors, labels, 2) == 2 / 3


def test_clip_embeddings_average_each_clips_own_frames() -> None:
    class Frames:  # one frame per 10 samples: the frame's mean value and the clip's length
        sample_rate = 100

        def __call__(self, waves: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(
                [
                    torch.stack(
                        [w.view(-1, 10).mean(1), torch.full((len(w) // 10,), float(len(w)))], 1
                    )
                    for w in waves
                ]
            )

    waves = [torch.arange(20.0), torch.ones(30)]
    per_clip = family.clip_embeddings(Frames(), waves)
    assert [f.shape for f in per_clip] == [(2, 2), (3, 2)]
    assert per_clip[0].mean(0).tolist() == [9.5, 20.0] and per_clip[1].mean(0).tolist() == [
        1.0,
        30.0,
    ]
