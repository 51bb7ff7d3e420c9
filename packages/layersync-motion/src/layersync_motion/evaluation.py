"""T2M evaluation of a motion model: the trained evaluator (cached) and ``evaluate``'s body.

``metric.evaluator`` picks the embedding networks: ``trained`` (this package's contrastive
evaluator, trained once per data config and cached) or ``t2m`` (the official T2M networks,
``t2m.py``). Per replication: FID, R-precision top-1..3, MM-Dist and Diversity of ``num_samples``
generations against their real clips (``metrics.py``), MultiModality when
``metric.multimodality`` (``mm_eval.py``); reported as mean and 95% interval over replications.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layersync.assets import AssetError
from layersync.fileio import atomic_path, cache_dir

from .evaluator import EvaluatorSize, TrainedEvaluator, train_evaluator
from .metrics import diversity, fid, matching, mean_interval
from .mm_eval import mm_replication
from .plugin import (
    T2M_METRICS,
    build_dataset,
    data_root,
    eval_conditions,
    generate,
    skeleton,
    stats,
)
from .t2m import T2MEvaluator

# --------------------------------------------------------------------------------------------
# Evaluator (trained once per data config, cached)
# --------------------------------------------------------------------------------------------


def evaluator_key(cfg: Any) -> dict[str, Any]:
    mc = cfg.metric
    return {
        "version": 1,
        "root": str(data_root(cfg).resolve()),
        "split": cfg.data.train_split,
        "skeleton": skeleton(cfg).name,
        "max_len": cfg.data.max_len,
        "text": cfg.text.encoder,
        **text_key(cfg.text.encoder, cfg.text.clip_path),
        "steps": mc.evaluator_steps,
        "hidden": mc.evaluator_hidden,
        "out": mc.evaluator_out,
        "seed": cfg.run.seed,
    }


def text_key(encoder: str, clip_path: str | None) -> dict[str, str]:
    """The CLIP file joins the evaluator key (MiniLM keys stay as they were)."""
    return {"clip_path": str(Path(str(clip_path)).resolve())} if encoder == "clip" else {}


def trained_evaluator(cfg: Any, log=None, retrain: bool = False):
    from .text import text_encoder

    key = evaluator_key(cfg)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir("motion", "evaluators") / f"{digest}.pt"
    mc = cfg.metric
    size = EvaluatorSize(
        mc.evaluator_hidden, mc.evaluator_hidden, mc.evaluator_hidden, mc.evaluator_out
    )
    enc = text_encoder(cfg.text.encoder, cfg.text.clip_path)
    if path.is_file() and not retrain:
        ev = TrainedEvaluator(skeleton(cfg).feature_dim, enc.dim, size)
        ev.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return ev.eval()
    dataset = build_dataset(cfg, "train")
    ev = train_evaluator(dataset, enc, mc.evaluator_steps, 32, 1e-4 * 3, cfg.run.seed, size, log)
    with atomic_path(path) as tmp:
        torch.save(ev.state_dict(), tmp)
    (path.with_suffix(".json")).write_text(json.dumps(key, indent=1))
    return ev


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def evaluate_t2m(
    plugin: Any, model, cfg: Any, out_dir: Path, generator: torch.Generator
) -> dict[str, float]:
    """``MotionModality.evaluate``: ``plugin`` writes the first replication's samples."""
    from .text import text_encoder

    mc = cfg.metric
    if mc.evaluator == "t2m":
        if not mc.t2m_dir or not mc.glove_dir:
            raise AssetError("metric.evaluator = 't2m' needs metric.t2m_dir and metric.glove_dir")
        ev = T2MEvaluator.load(mc.t2m_dir, mc.glove_dir, skeleton(cfg).feature_dim)

        def embed_text(cond):
            return ev.text_embedding_from_tokens(cond["tokens"])
    else:
        ev = trained_evaluator(cfg)
        enc = text_encoder(cfg.text.encoder, cfg.text.clip_path)

        def embed_text(cond):
            return ev.text_embedding(enc(cond["caption"]))

    dataset = build_dataset(cfg, "eval")
    mean, std = (torch.from_numpy(a) for a in stats(cfg))

    @torch.no_grad()
    def embed_motion(x: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).unsqueeze(-1)
        return ev.motion_embedding((x * std + mean) * mask, lengths).numpy()

    def sample(captions: list[str], lengths: torch.Tensor) -> torch.Tensor:
        return generate(model, cfg, captions, lengths, generator).cpu()

    names = [*T2M_METRICS, *(["multimodality"] if mc.multimodality else [])]
    per_rep: dict[str, list[float]] = {k: [] for k in names}
    gt_top3, gt_diversity = [], []
    for rep in range(mc.replications):
        cond = eval_conditions(dataset, mc.num_samples, generator)
        x = sample(cond["caption"], cond["length"])
        if rep == 0:
            plugin.write_samples(
                {"x": x, "length": cond["length"], "caption": cond["caption"]},
                out_dir,
                cfg,
                "eval-samples",
            )
        gen, real = embed_motion(x, cond["length"]), embed_motion(cond["real"], cond["length"])
        with torch.no_grad():
            text = embed_text(cond).numpy()
        mm_dist, r = matching(text, gen)
        per_rep["fid"].append(fid(real, gen))
        per_rep["mm_dist"].append(mm_dist)
        for k in range(3):
            per_rep[f"r_precision_top{k + 1}"].append(float(r[k]))
        per_rep["diversity"].append(diversity(gen, mc.diversity_times, seed=cfg.run.seed + rep))
        gt_top3.append(float(matching(text, real)[1][2]))
        gt_diversity.append(diversity(real, mc.diversity_times, seed=cfg.run.seed + rep))
        if mc.multimodality:  # after the main batch: see mm_eval.py for the protocol
            mm = mm_replication(gen, cond, mc, cfg.run.seed + rep, sample, embed_motion)
            per_rep["multimodality"].append(mm)
    out: dict[str, float] = {}
    for k, values in per_rep.items():
        out[k], out[f"{k}_interval"] = mean_interval(values)
    out["gt_r_precision_top3"] = float(np.mean(gt_top3))
    out["diversity_real"] = float(np.mean(gt_diversity))  # the value Diversity should reach
    return out
