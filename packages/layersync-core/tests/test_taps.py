"""FeatureTaps: which modules get hooked, what is captured, wrappers, and lifetime."""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from layersync.loss import LayerSync
from layersync.taps import (
    FeatureTaps,
    first_of_tuple,
    resolve_module,
    sequence_first,
    tap_names,
    unwrap_model,
)

# --------------------------------------------------------------------------------------------
# Small models
# --------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Residual block that counts its forward calls (to see checkpoint recomputes)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + torch.tanh(self.lin(x))


class Stack(nn.Module):
    """embed -> blocks -> head on (B, T, D) tokens; ``checkpointed`` blocks use checkpoint()."""

    def __init__(self, dim: int = 8, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, dim)
        self.checkpointed: set[int] = set()
        self.fail_after: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if i in self.checkpointed else block(x)
            if i == self.fail_after:
                raise RuntimeError("boom")
        return self.head(x)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block output, computed by hand (no hooks involved)."""
        outs, x = [], self.embed(x)
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SeqFirstEncoder(nn.Module):
    """MDM-like: a sequence-first nn.TransformerEncoder with a condition token at index 0."""

    def __init__(self, dim: int = 16, depth: int = 4) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=False)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.cond = nn.Parameter(torch.randn(1, 1, dim))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, B, D) -> (T+1, B, D)
        return torch.cat([self.cond.expand(1, x.shape[1], -1), x], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.tokens(x))[1:]


def hook_counts(model: nn.Module) -> dict[str, int]:
    return {name: len(m._forward_hooks) for name, m in model.named_modules()}


@pytest.fixture
def stack() -> Stack:
    torch.manual_seed(0)
    return Stack()


# --------------------------------------------------------------------------------------------
# Capture by name
# --------------------------------------------------------------------------------------------


def test_capture_by_dotted_name_hooks_only_requested(stack: Stack) -> None:
    x = torch.randn(2, 5, 8)
    taps = FeatureTaps(stack, ["blocks.1", "blocks.3"])
    assert sum(hook_counts(stack).values()) == 0  # constructing hooks nothing
    with taps:
        counts = hook_counts(stack)
        stack(x)
    assert {n for n, c in counts.items() if c} == {"blocks.1", "blocks.3"}
    assert counts["blocks.1"] == counts["blocks.3"] == 1
    assert sum(hook_counts(stack).values()) == 0  # removed on exit

    feats = taps.pop()
    assert list(feats) == ["blocks.1", "blocks.3"]
    with torch.no_grad():
        ref = stack.block_outputs(x)
    assert torch.equal(feats["blocks.1"], ref[1])
    assert torch.equal(feats["blocks.3"], ref[3])
    assert taps.features == {}


def test_nested_name_and_sequence_first_view() -> None:
    torch.manual_seed(0)
    model = SeqFirstEncoder()
    x = torch.randn(6, 3, 16)  # (T, B, D), sequence-first
    taps = FeatureTaps(model, ["encoder.layers.1", "encoder.layers.3"], view=sequence_first(1))
    assert taps.modules["encoder.layers.3"] is model.encoder.layers[3]
    with taps:
        counts = hook_counts(model)
        model(x)
    assert {n for n, c in counts.items() if c} == {"encoder.layers.1", "encoder.layers.3"}
    feats = taps.pop()

    with torch.no_grad():
        h = model.tokens(x)
        outs = []
        for layer in model.encoder.layers:
            h = layer(h)
            outs.append(h)
    for i in (1, 3):
        got = feats[f"encoder.layers.{i}"]
        assert got.shape == (3, 6, 16)  # (B, T, D) without the condition token
        torch.testing.assert_close(got, outs[i][1:].transpose(0, 1), rtol=0, atol=0)


def test_sequence_first_and_first_of_tuple_views() -> None:
    z = torch.randn(5, 2, 4)
    extra = torch.randn(3)
    assert torch.equal(sequence_first()(z), z.transpose(0, 1))
    assert torch.equal(sequence_first(2)((z, extra)), z[2:].transpose(0, 1))
    assert first_of_tuple((z, extra)) is z
    assert first_of_tuple([z]) is z
    assert first_of_tuple(z) is z


def test_tuple_output_module_is_captured_as_first_element() -> None:
    torch.manual_seed(0)

    class AttnModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x)[0]

    model = AttnModel()
    x = torch.randn(2, 5, 8)
    for view in (first_of_tuple, None):  # None falls back to first_of_tuple
        taps = FeatureTaps(model, ["attn"], view=view)
        with taps:
            model(x)
        got = taps.pop()["attn"]
        with torch.no_grad():
            out, weights = model.attn(x, x, x)
        assert weights.shape == (2, 5, 5)  # the module really returns a tuple
        assert torch.equal(got, out)


def test_persistent_hooks_record_only_inside_with(stack: Stack) -> None:
    x = torch.randn(2, 5, 8)
    taps = FeatureTaps(stack, ["blocks.2"]).attach()
    taps.attach()  # idempotent
    assert len(stack.blocks[2]._forward_hooks) == 1
    stack(x)
    assert taps.features == {}
    with taps:
        stack(x)
    assert len(stack.blocks[2]._forward_hooks) == 1  # `with` did not detach what it didn't attach
    assert set(taps.pop()) == {"blocks.2"}
    taps.detach()
    assert sum(hook_counts(stack).values()) == 0


def test_module_running_twice_or_not_at_all_is_an_error(stack: Stack) -> None:
    x = torch.randn(2, 5, 8)
    taps = FeatureTaps(stack, ["blocks.1"])
    with pytest.raises(RuntimeError, match="ran twice"), taps:
        stack(x)
        stack(x)
    assert taps.features == {}
    with taps:
        stack.embed(x)  # blocks.1 never runs
    with pytest.raises(RuntimeError, match=r"blocks\.1"):
        taps.pop()


# --------------------------------------------------------------------------------------------
# Wrappers: DDP, torch.compile, activation checkpointing
# --------------------------------------------------------------------------------------------


def test_through_ddp(stack: Stack, tmp_path) -> None:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    from torch.nn.parallel import DistributedDataParallel as DDP

    plain = copy.deepcopy(stack)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        ddp = DDP(stack)
        assert unwrap_model(ddp) is stack
        assert tap_names("blocks", ddp) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
        taps = FeatureTaps(ddp, ["blocks.1", "module.blocks.2"])
        assert taps.modules["blocks.1"] is stack.blocks[1]
        assert taps.modules["module.blocks.2"] is stack.blocks[2]

        x = torch.randn(2, 5, 8)
        with taps:
            ddp(x)
        feats = taps.pop()
        with torch.no_grad():
            ref = plain.block_outputs(x)
        assert torch.equal(feats["blocks.1"], ref[1])
        assert torch.equal(feats["module.blocks.2"], ref[2])

        # a full LayerSync step through DDP gives the same gradients as the plain model
        grads = []
        for model in (ddp, plain):
            sync = LayerSync(model, "2<-3", weight=1.0, warn=False)
            with sync:
                out = model(x)
            (out.pow(2).mean() + sync.loss()).backward()
            grads.append([p.grad for p in model.parameters()])
        for g_ddp, g_plain in zip(*grads, strict=True):
            torch.testing.assert_close(g_ddp, g_plain)
    finally:
        dist.destroy_process_group()


def test_through_torch_compile(stack: Stack) -> None:
    compiled = torch.compile(stack, backend="eager")
    assert unwrap_model(compiled) is stack
    taps = FeatureTaps(compiled, ["blocks.1", "_orig_mod.blocks.3"])
    assert taps.modules["blocks.1"] is stack.blocks[1]
    assert taps.modules["_orig_mod.blocks.3"] is stack.blocks[3]
    try:
        assert_captures(taps, compiled, stack, {"blocks.1": 1, "_orig_mod.blocks.3": 3})
        assert sum(hook_counts(stack).values()) == 0
    finally:
        torch._dynamo.reset()


def assert_captures(
    taps: FeatureTaps, call: Callable[[torch.Tensor], object], stack: Stack, blocks: dict
) -> None:
    """Two calls (the second reuses compiled code): each tap holds its block's output."""
    for _ in range(2):
        x = torch.randn(2, 5, 8)
        with taps:
            call(x)
        feats = taps.pop()
        with torch.no_grad():
            ref = stack.block_outputs(x)
        for name, index in blocks.items():
            torch.testing.assert_close(feats[name], ref[index])


def test_compiled_twin_without_taps_does_not_hide_the_hooks(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An A/B run in one process: a compiled vanilla model of the same class runs first; its
    graph must not be reused for the tapped model (torch.compile skips hook guards by default)."""
    monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", True)  # the default
    twin = Stack()
    twin.load_state_dict(stack.state_dict())
    vanilla, tapped = torch.compile(twin, backend="eager"), torch.compile(stack, backend="eager")
    taps = FeatureTaps(stack, ["blocks.1", "blocks.3"]).attach()
    try:
        assert_captures(
            taps, lambda x: (vanilla(x), tapped(x)), stack, {"blocks.1": 1, "blocks.3": 3}
        )
    finally:
        taps.detach()
        torch._dynamo.reset()


@pytest.mark.parametrize("persistent", [False, True], ids=["with-only", "attached"])
def test_checkpoint_inside_forward(stack: Stack, persistent: bool) -> None:
    ckpt = copy.deepcopy(stack)
    ckpt.checkpointed = {1, 3}
    x = torch.randn(2, 5, 8)
    grads = []
    for model in (stack, ckpt):
        sync = LayerSync(model, "2<-4", weight=1.0, warn=False)
        if persistent:  # the taps' hooks stay registered during backward's recompute
            sync.attach()
        fired: list[int] = []  # forward-hook calls on the student block, recompute included
        counter = model.blocks[1].register_forward_hook(lambda *_, f=fired: f.append(1))
        # no early stop: the recompute runs each checkpointed block to its end (and its hooks)
        with set_checkpoint_early_stop(False), sync:
            out = model(x)
        student = sync.taps.features["blocks.1"]
        assert student.grad_fn is not None  # the captured feature has a grad path
        loss = out.pow(2).mean() + sync.loss()
        assert sync.taps.features == {}
        loss.backward()  # recomputes blocks 1 and 3 of the checkpointed model
        assert sync.taps.features == {}  # ... without re-capturing (and no "ran twice")
        assert len(fired) == (2 if model is ckpt else 1)
        counter.remove()
        grads.append([p.grad for p in model.parameters()])
        sync.detach()
    for g_plain, g_ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(g_ckpt, g_plain, rtol=0, atol=0)


def test_checkpoint_wrapper_tapped_by_original_name(stack: Stack) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    wrapped = copy.deepcopy(stack)
    for i in range(len(wrapped.blocks)):
        wrapped.blocks[i] = checkpoint_wrapper(wrapped.blocks[i])
    assert "blocks.1._checkpoint_wrapped_module" in dict(wrapped.named_modules())
    assert tap_names("blocks", wrapped) == [f"blocks.{i}" for i in range(4)]

    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        ref = stack.block_outputs(x)
    grads = []
    for model in (stack, wrapped):
        sync = LayerSync(model, "2<-4", weight=1.0, warn=False)
        with sync:
            out = model(x)
        torch.testing.assert_close(sync.taps.features["blocks.1"], ref[1], rtol=0, atol=0)
        (out.pow(2).mean() + sync.loss()).backward()
        assert sync.taps.features == {}
        grads.append([p.grad for p in model.parameters()])
    inner = wrapped.blocks[1]._checkpoint_wrapped_module
    assert inner.calls == 2  # forward + recompute in backward
    for g_plain, g_wrapped in zip(*grads, strict=True):
        torch.testing.assert_close(g_wrapped, g_plain, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Lifetime: hooks and captured tensors
# --------------------------------------------------------------------------------------------


def test_hooks_removed_and_features_dropped_when_forward_raises(stack: Stack) -> None:
    stack.fail_after = 2  # blocks 0..2 run (and are captured), then the forward raises
    taps = FeatureTaps(stack, ["blocks.1", "blocks.3"])
    with pytest.raises(RuntimeError, match="boom"), taps:
        stack(torch.randn(2, 5, 8))
    assert sum(hook_counts(stack).values()) == 0
    assert not taps.attached
    assert taps.features == {}

    taps.attach()  # persistent hooks stay, but the partial capture is still dropped
    with pytest.raises(RuntimeError, match="boom"), taps:
        stack(torch.randn(2, 5, 8))
    assert taps.attached and taps.features == {}
    taps.detach()


def _live_tensors() -> int:
    for _ in range(10):  # a collection can free objects that only the next one reclaims
        if not gc.collect():
            break
    # type() rather than isinstance(): no __class__ lookups on deprecated proxies
    return sum(issubclass(type(obj), torch.Tensor) for obj in gc.get_objects())


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny ops gain nothing from intra-op threads, and lose a lot on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_captured_tensors_are_released_over_200_steps() -> None:
    torch.manual_seed(0)
    model = Stack(dim=8, depth=6)
    sync = LayerSync(model, "2<-4,3<-5", weight=0.5, warn=False)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(4, 5, 8)
    live = {}
    for step in range(1, 201):
        with sync:
            out = model(x)
        refs = [weakref.ref(f) for f in sync.taps.features.values()]
        assert len(refs) == 4
        loss = out.pow(2).mean() + sync.loss()
        assert sync.taps.features == {}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del out, loss
        assert all(ref() is None for ref in refs), f"captured feature alive after step {step}"
        assert sum(hook_counts(model).values()) == 0
        if step in (10, 200):
            live[step] = _live_tensors()
    assert live[200] == live[10]


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def test_unknown_names_raise_keyerror_with_nearby_names(stack: Stack) -> None:
    with pytest.raises(KeyError) as err:
        FeatureTaps(stack, ["blocks.9"])
    msg = err.value.args[0]
    assert "'blocks.9'" in msg and "blocks.0" in msg and "blocks.3" in msg

    with pytest.raises(KeyError) as err:  # a typo in the container name still gets a hint
        resolve_module(stack, "blokcs.1")
    assert "blocks.1" in err.value.args[0]

    encoder = SeqFirstEncoder()
    with pytest.raises(KeyError) as err:  # siblings of a deep name, not its grandchildren
        resolve_module(encoder, "encoder.layers.7")
    msg = err.value.args[0]
    assert all(f"encoder.layers.{i}" in msg for i in range(4))


def test_tap_names(stack: Stack) -> None:
    assert tap_names("blocks", stack) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert tap_names(["blocks.3", "blocks.0"]) == ["blocks.3", "blocks.0"]
    encoder = SeqFirstEncoder(depth=3)
    assert tap_names("encoder.layers", encoder) == [f"encoder.layers.{i}" for i in range(3)]
    with pytest.raises(ValueError, match="model"):
        tap_names("blocks")
    with pytest.raises(ValueError, match="no child"):
        tap_names("embed", stack)
    with pytest.raises(KeyError):
        tap_names("layers", stack)


def test_a_child_called_module_is_not_mistaken_for_a_wrapper() -> None:
    model = nn.Module()
    model.module = nn.Linear(4, 4)
    model.head = nn.Linear(4, 4)
    assert unwrap_model(model) is model
    assert resolve_module(model, "module") is model.module
    assert resolve_module(model, "head") is model.head
