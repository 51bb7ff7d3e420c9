"""Everything about a SiT size in one table: the LayerSync pair and λ, and the paper's recipe.

The dimensions (depth, width, heads, patch) of ``SiT-S/2 ... SiT-XL/8`` are ``SIT_CONFIGS`` in
``model.py``; the training recipe of a size is its preset file ``presets/<preset>.toml``.
"""

from __future__ import annotations

from typing import NamedTuple

from layersync.plugin import LayerSyncDefaults, depth_ratio_pairs


class SizeDefaults(NamedTuple):
    pairs: str
    weight: float
    preset: str | None  # the paper's ImageNet-256 recipe for the size, if it has one


# The paper's pairs and λ (XL, L, and λ for B); the B and S pairs follow its heuristic
# (student about a third of the depth, teacher about two thirds).
SIZES: dict[str, SizeDefaults] = {
    "XL": SizeDefaults("8<-16", 0.2, "sit-xl2-imagenet256"),
    "L": SizeDefaults("8<-18", 0.2, "sit-l2-imagenet256"),
    "B": SizeDefaults("4<-8", 0.3, "sit-b2-imagenet256"),
    "S": SizeDefaults("4<-8", 0.3, None),
}


def default_pair(arch: str, depth: int) -> LayerSyncDefaults:
    """The paper's pair/λ for a SiT size; otherwise the XL ratio (8/28 <- 16/28) of the depth."""
    size = arch.removeprefix("SiT-").split("/")[0]
    if arch != "custom" and size in SIZES:
        return LayerSyncDefaults(SIZES[size].pairs, SIZES[size].weight)
    return LayerSyncDefaults(depth_ratio_pairs(depth), 0.2)


# What the paper itself states (the rest of SIZES follows its heuristic).
PAPER_PAIRS = {"XL": "8<-16", "L": "8<-18"}
PAPER_WEIGHTS = {"XL": 0.2, "L": 0.2, "B": 0.3}
RATIO_RULE = "derived by the depth-ratio rule, not from the paper"


def pair_source(arch: str, depth: int, pairs: str, weight: float) -> str:
    """Where a run's pair and λ come from, stated honestly for the dry run and config show."""
    size = arch.removeprefix("SiT-").split("/")[0] if arch != "custom" else None
    spec = pairs.replace(" ", "")
    paper_pair = size is not None and PAPER_PAIRS.get(size) == spec
    paper_weight = size is not None and PAPER_WEIGHTS.get(size) == weight
    name = f"SiT-{size}" if size else f"custom SiT ({depth} blocks)"
    if paper_pair and paper_weight:
        return f"pair {spec} and λ {weight:g}: the paper's for {name}"
    ratio = default_pair("custom", depth).pairs
    if spec == ratio or (size in SIZES and SIZES[size].pairs == spec):
        what = f"pair {spec}: {RATIO_RULE}"
    else:
        what = f"pair {spec}: set in the config, not from the paper"
    if paper_weight:
        return f"{what}; λ {weight:g}: the paper's for {name}"
    return f"{what}; λ {weight:g}: not the paper's for {name}"
