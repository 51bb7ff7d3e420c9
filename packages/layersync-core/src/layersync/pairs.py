"""Layer pairs (``student<-teacher``): parsed and checked in one place, shared by config
validation, ``--dry-run``, train, probe and bench.

``parse_pairs`` reads the spec (``"8<-16"``, ``"4<-8,6<-12"``), ``check_order`` makes the
depth-independent checks, ``validate_pairs`` adds the model's depth and warns
(``LayerSyncHeuristicWarning``) where a pair leaves the paper's heuristic, and
``effective_layersync`` gives a run's pairs and λ. Torch-free, like ``layersync.config``;
``layersync.loss`` re-exports these names.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layersync.plugin import Modality


@dataclass(frozen=True, order=True)
class LayerPair:
    """``student <- teacher``: block ``student`` is pulled toward block ``teacher`` (1-based)."""

    student: int
    teacher: int

    def __str__(self) -> str:
        return f"{self.student}<-{self.teacher}"


_PAIR_RE = re.compile(r"^\s*(\d+)\s*<-\s*(\d+)\s*$")


def parse_pairs(spec: str | Sequence[str | tuple[int, int] | LayerPair]) -> list[LayerPair]:
    """Parse ``"8<-16"``, ``"4<-8, 6<-10"``, ``[(8, 16)]`` or ``["8<-16"]`` into pairs."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    pairs = []
    for item in items:
        if isinstance(item, LayerPair):
            pairs.append(item)
        elif isinstance(item, str):
            match = _PAIR_RE.match(item)
            if not match and not item.strip():
                raise ValueError(
                    f"empty layer pair in {spec!r}: expected 'student<-teacher' items "
                    "separated by commas, e.g. '4<-8,6<-12'"
                )
            if not match:
                raise ValueError(
                    f"bad layer pair {item.strip()!r}: expected 'student<-teacher', e.g. '8<-16'"
                )
            pairs.append(LayerPair(int(match[1]), int(match[2])))
        else:
            student, teacher = item
            pairs.append(LayerPair(int(student), int(teacher)))
    if not pairs:
        raise ValueError("no layer pair given: expected e.g. '8<-16'")
    return pairs


def validate_pairs(pairs: Sequence[LayerPair], depth: int, *, warn: bool = True) -> None:
    """Check pairs against the model depth; warn where they leave the paper's heuristic.

    Errors: student >= teacher (the reference code's self-alignment has zero gradient), an
    index outside ``1..depth``, duplicate pairs. Warnings: teacher in the last ~20% of blocks
    (they decode rather than represent), student in the very first blocks, a gap under ~10%.
    """
    check_order(pairs)
    for p in pairs:
        if not (1 <= p.student <= depth and 1 <= p.teacher <= depth):
            raise ValueError(f"layer pair {p}: blocks must be in 1..{depth} for this model")
        if not warn:
            continue
        if p.teacher > math.ceil(0.8 * depth):
            _warn(f"teacher {p.teacher} is in the last 20% of the {depth} blocks (they decode)")
        if p.student <= max(1, depth // 10):
            _warn(f"student {p.student} is one of the very first of {depth} blocks")
        if p.teacher - p.student < max(2, depth // 10):
            _warn(f"pair {p} has a small gap; the paper uses about a third of the depth")


def _warn(message: str) -> None:
    warnings.warn(f"LayerSync heuristic: {message}", LayerSyncHeuristicWarning, stacklevel=3)


class LayerSyncHeuristicWarning(UserWarning):
    """A pair that is valid but outside the paper's recommendations."""


def check_order(pairs: Sequence[LayerPair]) -> None:
    """The depth-independent checks: student < teacher, no pair twice."""
    seen = set()
    for p in pairs:
        if p.student < 1:
            raise ValueError(f"layer pair {p}: blocks are numbered from 1")
        if p.student >= p.teacher:
            raise ValueError(
                f"layer pair {p}: the student block must be shallower than the teacher "
                "(student < teacher)"
            )
        if p in seen:
            raise ValueError(f"layer pair {p} is given twice")
        seen.add(p)


def effective_layersync(
    cfg: Any, plugin: Modality, model: Any = None, *, warn: bool = True
) -> tuple[list[LayerPair], float] | None:
    """The run's pairs and λ (``layersync.pairs``/``weight`` or the plugin's defaults),
    checked against the model's depth; None when ``layersync.enabled`` is false. ``model``
    is built from ``cfg`` when not given. Problems are ``ConfigError``s naming the key."""
    from layersync.config import ConfigError  # config imports this module

    ls = cfg.layersync
    if not ls.enabled:
        return None
    defaults = None
    if ls.pairs is None or ls.weight is None:
        defaults = plugin.default_layersync(cfg)
    spec = ls.pairs if ls.pairs is not None else defaults.pairs
    weight = ls.weight if ls.weight is not None else defaults.weight
    if model is None:
        model = plugin.build_model(cfg)
    depth = len(plugin.block_names(cfg, model))
    try:
        pairs = parse_pairs(spec)
        validate_pairs(pairs, depth, warn=warn)
    except ValueError as e:
        where = "" if ls.pairs is not None else f" (the {plugin.name} plugin's default)"
        raise ConfigError(f"layersync.pairs = {spec!r}{where}: {e}") from None
    return pairs, weight
