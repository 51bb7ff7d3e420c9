"""MultiModality in ``evaluate``: MDM's ``mm_short`` protocol, opt-in (``metric.multimodality``).

MDM (``eval/eval_humanml.py``, mode ``mm_short``): 100 prompts x 30 generations each,
MultiModality = mean distance of 10 random pairs among a prompt's generations (evaluator motion
embeddings), averaged over prompts; 5 replications, reported as mean ± 1.96·std/sqrt(reps) like
the other metrics. MDM's default mode for its tables without MultiModality, ``wo_mm`` (20
replications), is this plugin's default too (``metric.multimodality = false``); MDM's
``mm_short`` is ``metric.multimodality=true metric.replications=5``.

Per replication, here:
- the prompts are the first ``mm_num_samples`` of the replication's ``num_samples`` draws
  (caption and length); each prompt's first generation is its sample of the main evaluation
  (as in MDM, whose first repeat is also its main sample), the other ``mm_num_repeats - 1`` are
  generated afterwards, one pass over the prompts per repeat, with the same length;
- seeding: the generations draw from ``evaluate``'s generator (the run's evaluation seed),
  after the replication's main batch; the pairs from ``np.random.RandomState(run.seed + rep)``,
  as Diversity (MDM draws both from unseeded global state).

One difference from MDM: MDM rounds the prompts up to whole batches of 32 (100 -> 4 batches,
128 prompts); here exactly ``mm_num_samples``.

Direction: T2M and MDM mark MultiModality "↑" in their tables (a model that ignores its noise
scores 0), so it is declared ``higher_is_better=True`` (Diversity, marked "→", is declared with
no direction); it is never primary (``fid`` is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from layersync.plugin import MetricSpec

from .metrics import multimodality

MM_METRICS = {
    "multimodality": MetricSpec(higher_is_better=True),
    "multimodality_interval": MetricSpec(higher_is_better=False),
}

Sampler = Callable[[list[str], torch.Tensor], torch.Tensor]
"""(captions, lengths) -> normalised features (N, T, F), as ``plugin.generate``."""
Embedder = Callable[[torch.Tensor, torch.Tensor], np.ndarray]
"""(features, lengths) -> evaluator motion embeddings (N, D)."""


def mm_embeddings(
    first: np.ndarray,
    captions: Sequence[str],
    lengths: torch.Tensor,
    repeats: int,
    sample: Sampler,
    embed: Embedder,
) -> np.ndarray:
    """(P, repeats, D): for each of the P = len(first) prompts, its given embedding ``first[p]``
    then ``repeats - 1`` embeddings of new generations of (captions[p], lengths[p])."""
    p = len(first)
    caps, lens = list(captions[:p]), lengths[:p]
    rows = [np.asarray(first)]
    for _ in range(repeats - 1):
        rows.append(np.asarray(embed(sample(caps, lens), lens)))
    return np.stack(rows, axis=1)


def mm_replication(
    gen: np.ndarray, cond: dict[str, Any], mc: Any, seed: int, sample: Sampler, embed: Embedder
) -> float:
    """One replication's MultiModality: ``gen`` (N, D) the embeddings of the main generations
    for ``cond`` (captions, lengths); ``mc`` the metric config section."""
    n = mc.mm_num_samples
    act = mm_embeddings(gen[:n], cond["caption"], cond["length"], mc.mm_num_repeats, sample, embed)
    return multimodality(act, mc.mm_num_times, seed=seed)
