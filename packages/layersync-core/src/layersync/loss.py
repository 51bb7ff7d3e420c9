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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# pairs are parsed and checked in one place, layersync.pairs (torch-free, shared by config
# validation, --dry-run, train, probe and bench); re-exported for `from layersync.loss import ...`
from layersync.pairs import (  # noqa: F401
    LayerPair,
    LayerSyncHeuristicWarning,
    parse_pairs,
    validate_pairs,
)
from layersync.taps import FeatureTaps, TokenView, tap_names

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
    return _cosine_parts(student, teacher)[0]


def _cosine_parts(
    student: torch.Tensor, teacher: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cosine, student norms, teacher norms, dot products), all ``(B, T)`` float32."""
    s, t = student.float(), teacher.detach().float()
    # = (normalize(s) * normalize(t)).sum(-1) with normalize's eps, without writing two
    # normalised (B, T, D) copies: the dot product is divided by the (B, T) norms instead
    ns, nt, dot = s.norm(dim=-1), t.norm(dim=-1), (s * t).sum(-1)
    return dot / (ns.clamp_min(1e-6) * nt.clamp_min(1e-6)), ns, nt, dot


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
# Block diagnostics (cheap, from the features the taps hold; logged next to cos/<pair>)
# --------------------------------------------------------------------------------------------

SHORTCUT_COS = 0.99
SHORTCUT_GROWTH = 2.0


# Both come from the (B, T) token norms and dot products the term computes anyway: no extra
# pass over the (B, T, D) features, since ||t - s||^2 = ||s||^2 + ||t||^2 - 2 s.t per token.


@torch.no_grad()
def block_diagnostics(
    s_norm: torch.Tensor,
    t_norm: torch.Tensor,
    dot: torch.Tensor,
    dim: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(student RMS, teacher RMS, relative update) over valid tokens, from the ``(B, T)``
    token norms and dot products of a pair with ``dim`` channels.

    RMS is over tokens and channels; the relative update is
    ``||h_teacher - h_student|| / ||h_student||``: how much the blocks between student and
    teacher still change the residual stream (0 = they do nothing)."""
    s2 = masked_mean(s_norm.detach().square(), mask)
    t2 = masked_mean(t_norm.square(), mask)
    st = masked_mean(dot.detach(), mask)
    rel = ((s2 + t2 - 2 * st).clamp_min(0) / s2.clamp_min(1e-12)).sqrt()
    return (s2 / dim).sqrt(), (t2 / dim).sqrt(), rel


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
        blocks: the container of blocks (``"blocks"``), the explicit ordered list of names, or
            ``"diffusers"`` for a diffusers transformer (``layersync.backbones.diffusers_blocks``).
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
        if isinstance(blocks, str) and blocks == "diffusers":  # a diffusers transformer's blocks
            from layersync.backbones import diffusers_blocks

            spec = diffusers_blocks(model)
            blocks, view = spec.names, view or spec.view
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
        self._initial_rms: dict[str, torch.Tensor] | None = None
        self._warned: set[LayerPair] = set()
        self._weight: tuple[float, torch.Tensor] | None = None

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
        term), ``weight``, ``cos/<pair>`` (mean student-teacher cosine over valid tokens),
        ``rel/<pair>`` and ``rms/<block>`` (1-based; ``block_diagnostics``).
        """
        reg = self.regularizer(mask, t)
        weight = self.weight_at(step)
        if self._weight is None or self._weight[0] != weight:  # a new tensor only on change
            self._weight = (weight, torch.tensor(weight))
        self.stats["weight"] = self._weight[1]
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
            cos, s_norm, t_norm, dot = _cosine_parts(student, teacher)
            term = -masked_mean(cos, gate, count)
            terms.append(term)
            # without time gating the logged cosine is the term itself: no second reduction
            ungated = self.time_range is None
            stats[f"cos/{p}"] = -term.detach() if ungated else masked_mean(cos.detach(), mask)
            rms_s, rms_t, stats[f"rel/{p}"] = block_diagnostics(
                s_norm, t_norm, dot, student.shape[-1], mask
            )
            stats.setdefault(f"rms/{p.student}", rms_s)
            stats.setdefault(f"rms/{p.teacher}", rms_t)
        if self._initial_rms is None:  # the first step's norms: the shortcut warning's baseline
            self._initial_rms = {k: v for k, v in stats.items() if k.startswith("rms/")}
        reg = terms[0] if len(terms) == 1 else torch.stack(terms).mean()
        stats["reg"] = reg.detach()
        self.stats = stats
        return reg

    def shortcut_warnings(self, logged: dict[str, float]) -> list[str]:
        """One line per pair (once per run) when its logged cosine is > 0.99 while the
        student block's RMS has grown more than 2x since the first step: the term is being
        satisfied by inflating the student's norm and collapsing the blocks between student and
        teacher, not by better features (see ``layersync probe`` and ``rel/<pair>``)."""
        lines = []
        if logged.get("weight", 1.0) == 0:  # a measured vanilla arm: no term, no shortcut
            return lines
        for p in self.pairs:
            key, rms = f"cos/{p}", f"rms/{p.student}"
            if p in self._warned or key not in logged or rms not in logged:
                continue
            start = float((self._initial_rms or {}).get(rms, float("nan")))
            if logged[key] > SHORTCUT_COS and logged[rms] > SHORTCUT_GROWTH * start:
                self._warned.add(p)
                lines.append(
                    f"warning: pair {p}: cos {logged[key]:.3f} > {SHORTCUT_COS} while block "
                    f"{p.student}'s RMS grew {logged[rms] / start:.1f}x (> {SHORTCUT_GROWTH}x): "
                    "the term is met by norm growth, not by better features"
                )
        return lines

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
