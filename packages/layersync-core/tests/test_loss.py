"""The LayerSync term: value, gradient routing, masks, pairs, precision, gating, schedule."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layersync.loss import LayerSync, WeightSchedule, alignment_loss, token_cosine
from layersync.pairs import LayerPair, LayerSyncHeuristicWarning, parse_pairs, validate_pairs

# --------------------------------------------------------------------------------------------
# Small models and the reference formula
# --------------------------------------------------------------------------------------------


def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's term, written independently: -(n(a) * n(b)).sum(-1).mean()."""
    return -(F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean()


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(-1)


class Emit(nn.Module):
    """A block whose output is a fixed tensor (lets a test choose the features exactly)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


class Emitter(nn.Module):
    def __init__(self, *values: torch.Tensor) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Emit(v) for v in values)

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(x))


class Stack(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return x

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, x = [], self.embed(x)
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


def depth_model(depth: int) -> nn.Module:
    model = nn.Module()
    model.blocks = nn.ModuleList(nn.Identity() for _ in range(depth))
    return model


def run(sync: LayerSync, model: nn.Module, x: torch.Tensor | None = None) -> dict:
    """One tapped forward; returns a copy of the captured features (the taps keep theirs)."""
    with sync:
        model(x)
    return dict(sync.taps.features)


@pytest.fixture
def ab() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 7, 16, generator=g), torch.randn(3, 7, 16, generator=g)


# --------------------------------------------------------------------------------------------
# Value
# --------------------------------------------------------------------------------------------


def test_value_equals_negative_mean_cosine(ab) -> None:
    a, b = ab
    expected = reference(a, b)
    torch.testing.assert_close(alignment_loss(a, b), expected)

    model = Emitter(a, b)
    sync = LayerSync(model, "1<-2", weight=1.0, warn=False)
    run(sync, model)
    loss = sync.loss()
    torch.testing.assert_close(loss, expected)
    assert loss.ndim == 0
    # identical features give -1, opposite ones +1
    torch.testing.assert_close(alignment_loss(a, 3 * a), torch.tensor(-1.0))
    torch.testing.assert_close(alignment_loss(a, -a), torch.tensor(1.0))


def test_shape_mismatch_is_named(ab) -> None:
    a, b = ab
    with pytest.raises(ValueError, match=r"\(3, 7, 16\) vs \(3, 6, 16\)"):
        token_cosine(a, b[:, :6])


# --------------------------------------------------------------------------------------------
# Gradient routing
# --------------------------------------------------------------------------------------------


def test_gradient_reaches_student_and_earlier_blocks_only() -> None:
    torch.manual_seed(0)
    model = Stack(depth=6)
    sync = LayerSync(model, "2<-5", weight=1.0, warn=False)
    feats = run(sync, model, torch.randn(2, 5, 8))
    student, teacher = feats["blocks.1"], feats["blocks.4"]
    assert teacher.requires_grad  # it is in the graph; the regularizer must cut it
    loss = sync.loss()

    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, [*params, student, teacher], allow_unused=True)
    by_name = dict(zip(names, grads, strict=False))
    for name, grad in by_name.items():
        if name.startswith(("embed.", "blocks.0.", "blocks.1.")):  # the student and before it
            assert grad is not None and grad.abs().sum() > 0, name
        else:  # blocks 3..5 (between, teacher) and after: nothing
            assert grad is None or not grad.any(), name
    grad_student, grad_teacher = grads[-2:]
    assert grad_student is not None and grad_student.abs().sum() > 0
    assert grad_teacher is None


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def test_masked_tokens_do_not_count(ab) -> None:
    a, b = ab
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[0, 0] = True  # at least one valid token
    by_hand = -(cosines(a, b) * mask).sum() / mask.sum()
    torch.testing.assert_close(alignment_loss(a, b, mask), by_hand.float())
    torch.testing.assert_close(alignment_loss(a, b, mask.float()), by_hand.float())

    a2, b2 = a.clone(), b.clone()
    a2[~mask] = torch.randn_like(a2[~mask]) * 100
    b2[~mask] = -b2[~mask]
    torch.testing.assert_close(alignment_loss(a2, b2, mask), alignment_loss(a, b, mask))

    model = Emitter(a2, b2)
    sync = LayerSync(model, "1<-2", weight=1.0, warn=False)
    run(sync, model)
    torch.testing.assert_close(sync.loss(mask=mask), by_hand.float())
    torch.testing.assert_close(sync.stats["cos/1<-2"], -by_hand.float())


# --------------------------------------------------------------------------------------------
# Several pairs
# --------------------------------------------------------------------------------------------


def test_multiple_pairs_average_and_all_contribute() -> None:
    torch.manual_seed(0)
    model = Stack(depth=8)
    x = torch.randn(2, 5, 8)
    singles = []
    for pair in ("2<-5", "3<-7"):
        sync = LayerSync(model, pair, weight=1.0, warn=False)
        run(sync, model, x)
        singles.append(sync.loss().detach())

    sync = LayerSync(model, "2<-5, 3<-7", weight=1.0, warn=False)
    assert sync.taps.names == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    feats = run(sync, model, x)
    loss = sync.loss()
    torch.testing.assert_close(loss, (singles[0] + singles[1]) / 2)
    assert {"cos/2<-5", "cos/3<-7"} <= set(sync.stats)

    block2 = list(model.blocks[2].parameters())  # reaches the loss only through pair 3<-7
    grads = torch.autograd.grad(loss, [feats["blocks.1"], feats["blocks.2"], *block2])
    assert all(g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


def test_float32_under_bf16_autocast(ab) -> None:
    a, b = (v.to(torch.bfloat16) for v in ab)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = alignment_loss(a, b)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference(a.float(), b.float()), rtol=1e-6, atol=1e-6)

    torch.manual_seed(0)
    model = Stack(depth=4)
    sync = LayerSync(model, "1<-3", weight=1.0, warn=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = run(sync, model, torch.randn(2, 5, 8))
        loss = sync.loss()
    assert feats["blocks.0"].dtype == torch.bfloat16  # the model really ran in bf16
    assert loss.dtype == torch.float32
    expected = reference(feats["blocks.0"].float(), feats["blocks.2"].float())
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Time gating
# --------------------------------------------------------------------------------------------


def test_time_gating_zeroes_samples_but_keeps_denominator() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    t = torch.tensor([0.1, 0.2, 0.6, 0.9])  # bounds are inclusive: samples 1 and 2 count
    inside = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, -2:] = False
    cos = cosines(a, b)

    model = Emitter(a, b)
    sync = LayerSync(model, "1<-2", weight=1.0, time_range=(0.2, 0.6), warn=False)
    run(sync, model)
    # documented formula: gated-out samples weigh 0 but stay in the denominator
    expected = -(cos * inside[:, None]).sum() / cos.numel()
    torch.testing.assert_close(sync.loss(t=t), expected.float())

    run(sync, model)
    expected = -(cos * mask * inside[:, None]).sum() / mask.sum()
    torch.testing.assert_close(sync.loss(mask=mask, t=t), expected.float())

    # changing a gated-out sample changes nothing
    a2 = a.clone()
    a2[[0, 3]] = torch.randn(2, 6, 8, generator=g)
    model2 = Emitter(a2, b)
    sync2 = LayerSync(model2, "1<-2", weight=1.0, time_range=(0.2, 0.6), warn=False)
    run(sync2, model2)
    torch.testing.assert_close(sync2.loss(mask=mask, t=t), expected.float())

    run(sync, model)
    with pytest.raises(ValueError, match="time t"):
        sync.loss()
    with pytest.raises(ValueError, match="time_range"):
        LayerSync(model, "1<-2", time_range=(0.8, 0.2), warn=False)


# --------------------------------------------------------------------------------------------
# Weight schedule
# --------------------------------------------------------------------------------------------


def test_weight_schedules() -> None:
    constant = WeightSchedule(0.2)
    assert [constant(s) for s in (None, 0, 10, 10**6)] == [0.2] * 4

    warmup = WeightSchedule(0.2, "warmup", warmup_steps=100)
    got = [warmup(s) for s in (0, 25, 50, 100, 5000, None)]
    assert got == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.2, 0.2])

    decay = WeightSchedule(0.2, "decay", decay_start=100, decay_steps=100, final_weight=0.05)
    got = [decay(s) for s in (0, 99, 100, 150, 200, 1000)]
    assert got == pytest.approx([0.2, 0.2, 0.2, 0.125, 0.05, 0.05])

    both = WeightSchedule(0.4, "decay", warmup_steps=10, decay_start=20, decay_steps=10)
    got = [both(s) for s in (0, 5, 10, 20, 25, 30, 40)]
    assert got == pytest.approx([0.0, 0.2, 0.4, 0.4, 0.2, 0.0, 0.0])

    with pytest.raises(ValueError, match="'cosine'"):
        WeightSchedule(0.2, "cosine")


def test_loss_uses_the_schedule_at_the_given_step(ab) -> None:
    a, b = ab
    model = Emitter(a, b)
    sync = LayerSync(model, "1<-2", weight=WeightSchedule(0.4, "warmup", 100), warn=False)
    for step, weight in ((25, 0.1), (None, 0.4)):
        run(sync, model)
        torch.testing.assert_close(sync.loss(step=step), weight * reference(a, b))
        assert sync.stats["weight"].item() == pytest.approx(weight)
        assert sync.weight_at(step) == pytest.approx(weight)


# --------------------------------------------------------------------------------------------
# Pair parsing and validation
# --------------------------------------------------------------------------------------------


def test_parse_pairs_forms() -> None:
    expected = [LayerPair(4, 8), LayerPair(6, 10)]
    assert parse_pairs("4<-8, 6<-10") == expected
    assert parse_pairs(" 4 <- 8 ,6<-10 ") == expected
    assert parse_pairs(["4<-8", (6, 10)]) == expected
    assert parse_pairs(expected) == expected
    assert str(LayerPair(8, 16)) == "8<-16"


def test_pair_names_are_one_definition_re_exported() -> None:
    """``layersync.pairs`` defines them; ``layersync.loss`` and ``layersync`` re-export them."""
    import layersync
    import layersync.loss
    import layersync.pairs

    for name in ("LayerPair", "LayerSyncHeuristicWarning", "parse_pairs", "validate_pairs"):
        assert getattr(layersync.loss, name) is getattr(layersync.pairs, name)
    assert layersync.parse_pairs is parse_pairs and layersync.LayerPair is LayerPair


@pytest.mark.parametrize("spec", ["8-16", "a<-b", "8->16", "4<-8, 8-16"])
def test_bad_pair_strings_are_named(spec: str) -> None:
    with pytest.raises(ValueError, match="bad layer pair") as err:
        parse_pairs(spec)
    bad = spec.split(",")[-1].strip()
    assert repr(bad) in str(err.value)


@pytest.mark.parametrize("spec", ["8<-16,", ",8<-16", "4<-8,,8<-16"])
def test_an_empty_pair_names_the_whole_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="empty layer pair") as err:
        parse_pairs(spec)
    assert repr(spec) in str(err.value)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("16<-8", "student < teacher"),
        ("8<-8", "student < teacher"),
        ("8<-40", "1..28"),
        ("0<-8", "numbered from 1"),
        ("8<-16,4<-12,8<-16", "given twice"),
    ],
)
def test_invalid_pairs_name_the_pair(spec: str, words: str) -> None:
    with pytest.raises(ValueError) as err:
        LayerSync(depth_model(28), spec, warn=False)
    message = str(err.value)
    assert words in message
    assert spec.split(",")[-1] in message  # the offending pair is named


@pytest.mark.parametrize(
    ("spec", "words"),
    [("8<-26", "last 20%"), ("1<-10", "very first"), ("8<-9", "small gap")],
)
def test_heuristic_warnings(spec: str, words: str) -> None:
    with pytest.warns(LayerSyncHeuristicWarning, match=words):
        LayerSync(depth_model(28), spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerSync(depth_model(28), spec, warn=False)


@pytest.mark.parametrize(("spec", "depth"), [("8<-16", 28), ("8<-18", 24), ("4<-8", 12)])
def test_paper_pairs_give_no_warning(spec: str, depth: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_pairs(parse_pairs(spec), depth)
        LayerSync(depth_model(depth), spec)


# --------------------------------------------------------------------------------------------
# Stats
# --------------------------------------------------------------------------------------------


def test_stats_report_mean_cosines_reg_and_weight() -> None:
    torch.manual_seed(0)
    model = Stack(depth=28)
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    sync = LayerSync(model, "8<-16,4<-12", weight=0.2)
    run(sync, model, x)
    loss = sync.loss(mask=mask)

    assert set(sync.stats) == {"cos/8<-16", "cos/4<-12", "reg", "weight"} | {
        "rel/8<-16",
        "rel/4<-12",
        *(f"rms/{k}" for k in (4, 8, 12, 16)),
    }
    assert not any(v.requires_grad for v in sync.stats.values())
    with torch.no_grad():
        outs = model.block_outputs(x)
    means = {}
    for s, t in ((8, 16), (4, 12)):
        cos = cosines(outs[s - 1], outs[t - 1])
        means[f"{s}<-{t}"] = (cos * mask).sum() / mask.sum()
        torch.testing.assert_close(sync.stats[f"cos/{s}<-{t}"].double(), means[f"{s}<-{t}"])
    reg = -(means["8<-16"] + means["4<-12"]) / 2
    torch.testing.assert_close(sync.stats["reg"].double(), reg)
    assert sync.stats["weight"].item() == pytest.approx(0.2)
    torch.testing.assert_close(loss.double(), 0.2 * reg)


# --------------------------------------------------------------------------------------------
# The fixed per-step cost (issue 9, section 5): what one loss() call launches
# --------------------------------------------------------------------------------------------


def test_token_cosine_equals_the_normalize_formula() -> None:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 33, generator=g), torch.randn(3, 7, 33, generator=g)
    s[0, 0] = 0.0  # a zero vector: the eps clamp, as F.normalize has it
    expected = (F.normalize(s, dim=-1, eps=1e-6) * F.normalize(t, dim=-1, eps=1e-6)).sum(-1)
    torch.testing.assert_close(token_cosine(s, t), expected, rtol=1e-6, atol=1e-6)
    half = token_cosine(s.bfloat16(), t.bfloat16())
    assert half.dtype == torch.float32  # normalised in float32 under bf16
    s.requires_grad_(True)
    token_cosine(s, t).sum().backward()
    ref = s.detach().clone().requires_grad_(True)
    (F.normalize(ref, dim=-1, eps=1e-6) * F.normalize(t, dim=-1, eps=1e-6)).sum().backward()
    torch.testing.assert_close(s.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_one_loss_call_writes_no_feature_sized_tensor_but_one() -> None:
    """The LayerSync term per step: the features are read, but the only (B, T, D)-sized result
    is the student-teacher product (no normalised copies), and the logged cosine reuses the
    term (no second reduction, no new tensor for an unchanged λ)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, tuple[int, ...]]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
            self.calls.append((str(func), shape))
            return out

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    model = Chain()
    sync = LayerSync(model, "2<-4", weight=0.2, warn=False).attach()
    x = torch.randn(4, 8, 16)
    for step in range(2):  # the second call is the steady state
        with sync:
            model(x)
        with Ops() as ops:
            sync.loss(None, None, step)
    compute = [(f, shape) for f, shape in ops.calls if "detach" not in f and "expand" not in f]
    big = [f for f, shape in compute if len(shape) == 3]
    assert big == ["aten.mul.Tensor"], compute
    assert not any("lift_fresh" in f or "stack" in f for f, _ in compute), compute
    # 15 (two of them (B, T, D) divisions) before; 12 for the term, then 16 small (B, T) or
    # scalar ops for the block diagnostics (rms/, rel/) from the term's norms and dot products
    assert len(compute) <= 12 + 16, compute
    sync.detach()
