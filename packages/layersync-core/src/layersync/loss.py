"""The LayerSync term: align a shallow block with a deeper one of the same forward pass.

For a pair ``k <- k'`` (1-based block indices, k < k'), with block outputs ``z_k`` of shape
``(B, T, D)`` taken after the residual (no norm, no projector):

    reg = mean over valid tokens and batch of  -cos(z_k, stopgrad(z_k'))
    loss = diffusion_loss + weight * reg

Several pairs are averaged (each pair contributes ``1/P``), so ``weight`` keeps the paper's
meaning whatever the number of pairs. Normalisation runs in float32 even under autocast.

Three-line use in any training loop::

    sync = LayerSync(model, pairs="8<-16", weight=0.2, blocks="blocks")
    with sync:
        out = model(x_t, t, y)
    loss = diffusion_loss + sync.loss()
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from layersync.taps import FeatureTaps, TokenView, tap_names

# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


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
    seen = set()
    for p in pairs:
        if not (1 <= p.student <= depth and 1 <= p.teacher <= depth):
            raise ValueError(f"layer pair {p}: blocks must be in 1..{depth} for this model")
        if p.student >= p.teacher:
            raise ValueError(
                f"layer pair {p}: the student block must be shallower than the teacher "
                "(student < teacher)"
            )
        if p in seen:
            raise ValueError(f"layer pair {p} is given twice")
        seen.add(p)
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


# --------------------------------------------------------------------------------------------
# The alignment term
# --------------------------------------------------------------------------------------------


def token_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-token cosine similarity ``(B, T)`` in float32; the teacher is detached."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher features differ in shape: {tuple(student.shape)} vs "
            f"{tuple(teacher.shape)}; use a view that maps both to (B, T, D)"
        )
    s = F.normalize(student.float(), dim=-1, eps=1e-6)
    t = F.normalize(teacher.detach().float(), dim=-1, eps=1e-6)
    return (s * t).sum(-1)


def masked_mean(
    values: torch.Tensor, weights: torch.Tensor | None, count: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``values`` ``(B, T)`` over tokens weighted by ``weights`` (bool or float mask).

    ``count`` overrides the denominator (default: the sum of the weights).
    """
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    count = weights.sum() if count is None else count
    return (values * weights).sum() / count.clamp_min(1.0)


def alignment_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``-cos(student, sg(teacher))`` averaged over valid tokens ``mask`` (B, T) and batch."""
    return -masked_mean(token_cosine(student, teacher), mask)


# --------------------------------------------------------------------------------------------
# Weight schedule and time gating
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSchedule:
    """λ as a function of the optimizer step.

    ``constant``: always ``weight``. ``warmup``: linear 0 -> weight over ``warmup_steps``.
    ``decay``: ``weight`` until ``decay_start``, then linear to ``final_weight`` over
    ``decay_steps`` (a warmup may precede it).
    """

    weight: float
    kind: str = "constant"
    warmup_steps: int = 0
    decay_start: int = 0
    decay_steps: int = 0
    final_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "warmup", "decay"):
            raise ValueError(f"unknown λ schedule {self.kind!r}: use constant, warmup or decay")

    def __call__(self, step: int | None) -> float:
        if step is None or self.kind == "constant":
            return self.weight
        w = self.weight
        if self.warmup_steps > 0 and step < self.warmup_steps:
            w *= step / self.warmup_steps
        if self.kind == "decay" and step >= self.decay_start:
            frac = 1.0 if self.decay_steps <= 0 else (step - self.decay_start) / self.decay_steps
            frac = min(max(frac, 0.0), 1.0)
            w = self.weight + frac * (self.final_weight - self.weight)
        return w


# --------------------------------------------------------------------------------------------
# The user-facing object
# --------------------------------------------------------------------------------------------


class LayerSync:
    """Taps a model's blocks and turns their outputs into the LayerSync term.

    Args:
        model: the backbone (wrapped or not).
        pairs: ``"8<-16"``, ``"4<-8,6<-12"`` or a sequence of pairs (1-based block indices).
        weight: λ, or a ``WeightSchedule``.
        blocks: the container of blocks (``"blocks"``) or the explicit ordered list of names.
        view: optional map from a block output to ``(B, T, D)`` tokens.
        time_range: apply only to samples whose time ``t`` lies in ``[lo, hi]`` (needs ``t``).
        warn: emit heuristic warnings for unusual pairs.
    """

    def __init__(
        self,
        model: nn.Module,
        pairs: str | Sequence[str | tuple[int, int] | LayerPair] = "8<-16",
        weight: float | WeightSchedule = 0.2,
        blocks: str | Sequence[str] = "blocks",
        view: TokenView | None = None,
        time_range: tuple[float, float] | None = None,
        warn: bool = True,
    ) -> None:
        self.block_names = tap_names(blocks, model)
        self.pairs = parse_pairs(pairs)
        validate_pairs(self.pairs, len(self.block_names), warn=warn)
        self.schedule = weight if isinstance(weight, WeightSchedule) else WeightSchedule(weight)
        if time_range is not None and not time_range[0] <= time_range[1]:
            raise ValueError(f"time_range {time_range} must be (low, high) with low <= high")
        self.time_range = time_range
        needed = sorted({i for p in self.pairs for i in (p.student, p.teacher)})
        self.taps = FeatureTaps(model, [self.block_names[i - 1] for i in needed], view)
        self.stats: dict[str, torch.Tensor] = {}

    def __enter__(self) -> LayerSync:
        self.taps.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.taps.__exit__(*exc)

    def attach(self) -> LayerSync:
        """Keep the hooks registered across steps (``with sync:`` then only arms them)."""
        self.taps.attach()
        return self

    def detach(self) -> None:
        self.taps.detach()

    def weight_at(self, step: int | None = None) -> float:
        return self.schedule(step)

    def loss(
        self,
        mask: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        step: int | None = None,
    ) -> torch.Tensor:
        """λ · reg for the last captured forward; releases the captured features.

        Args:
            mask: ``(B, T)`` valid-token mask (True/1 = counts), e.g. padding excluded.
            t: per-sample time ``(B,)``, required when ``time_range`` is set. Gated-out samples
               contribute zero but stay in the denominator, so λ keeps its scale.
            step: optimizer step for the λ schedule.

        After the call ``self.stats`` holds detached diagnostics: ``reg`` (the unweighted
        term), ``weight`` and ``cos/<pair>`` (mean student-teacher cosine over valid tokens).
        """
        reg = self.regularizer(mask, t)
        weight = self.weight_at(step)
        self.stats["weight"] = torch.tensor(weight)
        return reg * weight

    def regularizer(
        self, mask: torch.Tensor | None = None, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The unweighted term averaged over pairs (see ``loss``)."""
        feats = self.taps.pop()
        gate, count = self._gate(mask, t, feats[self.taps.names[0]])
        terms, stats = [], {}
        for p in self.pairs:
            student = feats[self.block_names[p.student - 1]]
            teacher = feats[self.block_names[p.teacher - 1]]
            cos = token_cosine(student, teacher)
            terms.append(-masked_mean(cos, gate, count))
            stats[f"cos/{p}"] = masked_mean(cos.detach(), mask)
        reg = torch.stack(terms).mean()
        stats["reg"] = reg.detach()
        self.stats = stats
        return reg

    def _gate(
        self, mask: torch.Tensor | None, t: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Token weights and denominator; out-of-range samples weigh 0 but stay counted."""
        if self.time_range is None:
            return mask, None
        if t is None:
            raise ValueError("time_range is set: pass the per-sample time t to loss()")
        lo, hi = self.time_range
        in_range = ((t >= lo) & (t <= hi)).to(like.device, torch.float32)  # (B,)
        valid = torch.ones(like.shape[:2], device=like.device) if mask is None else mask.float()
        return valid * in_range[:, None], valid.sum()

    def __repr__(self) -> str:
        pairs = ", ".join(map(str, self.pairs))
        return f"LayerSync(pairs=[{pairs}], weight={self.schedule.weight}, taps={self.taps.names})"
