"""Feature taps: capture block outputs of any ``nn.Module`` with forward hooks.

A tap never edits the model. It resolves dotted submodule names (``blocks.7``,
``seqTransEncoder.layers.3``) on the *unwrapped* model, so it works the same through
``DistributedDataParallel`` (``module.``), ``torch.compile`` (``_orig_mod.``) and
activation-checkpoint wrappers. An optional *view* maps a module output to ``(B, T, D)`` tokens
(tuple outputs, sequence-first layouts, dropping condition tokens).

    taps = FeatureTaps(model, ["blocks.3", "blocks.7"])
    with taps:                      # hooks live only inside the block
        out = model(x, t, y)
    feats = taps.pop()              # {"blocks.3": (B, T, D), ...}; the taps hold nothing now

Hooks record only while the ``with`` block is open, so the re-computation that activation
checkpointing performs during ``backward()`` never overwrites or re-captures a feature.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

TokenView = Callable[[Any], torch.Tensor]
"""Maps a module's raw output to a ``(B, T, D)`` token tensor."""

_WRAPPER_ATTRS = ("module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
_WRAPPER_PREFIXES = tuple(f"{a}." for a in _WRAPPER_ATTRS)


# --------------------------------------------------------------------------------------------
# Module resolution
# --------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / torch.compile / FSDP-1 / checkpoint wrappers down to the user's model."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        for attr in _WRAPPER_ATTRS:
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module) and _is_wrapper(model, attr):
                model = inner
                break
    return model


def _is_wrapper(outer: nn.Module, attr: str) -> bool:
    # A plain user module may legitimately have a child called "module"; only treat it as a
    # wrapper when that child is its only child (DDP, compile and the checkpoint wrapper do this).
    children = dict(outer.named_children())
    return list(children) == [attr]


def _strip_wrapper_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """Find a submodule by dotted name, looking through wrappers; the error lists close names."""
    root = unwrap_model(model)
    clean = _strip_wrapper_prefixes(name)
    try:
        return root.get_submodule(clean)
    except AttributeError:
        pass
    # Wrappers *inside* the model (e.g. checkpoint_wrapper around each block) add path segments.
    for full, module in root.named_modules():
        if _strip_inner_wrappers(full) == clean:
            return module
    # Nearby: the siblings the name would have had (blocks.0, blocks.1...), then close spellings.
    names = [n for n, _ in root.named_modules() if n]
    parent = clean.rpartition(".")[0]
    siblings = [n for n in names if n.rpartition(".")[0] == parent][:8]
    near = list(dict.fromkeys(siblings + difflib.get_close_matches(clean, names, n=3)))
    hint = f" Nearby names: {', '.join(near)}" if near else ""
    raise KeyError(f"no submodule named {name!r} in {type(root).__name__}.{hint}")


def _strip_inner_wrappers(name: str) -> str:
    parts = [p for p in name.split(".") if p not in _WRAPPER_ATTRS]
    return ".".join(parts)


def sequence_first(drop_first: int = 0) -> TokenView:
    """View for sequence-first outputs ``(T, B, D)``: transpose, optionally drop leading tokens.

    ``drop_first=1`` removes a condition token at index 0 (the MDM layout).
    """

    def view(output: Any) -> torch.Tensor:
        x = output[0] if isinstance(output, (tuple, list)) else output
        return x[drop_first:].transpose(0, 1)

    return view


def first_of_tuple(output: Any) -> torch.Tensor:
    """View for blocks that return ``(hidden, extras...)``."""
    return output[0] if isinstance(output, (tuple, list)) else output


# --------------------------------------------------------------------------------------------
# Taps
# --------------------------------------------------------------------------------------------


class FeatureTaps:
    """Capture the outputs of named submodules during a forward pass.

    Args:
        model: any module (may be wrapped by DDP, torch.compile, FSDP or checkpointing).
        names: dotted submodule names to capture; only these are hooked.
        view: optional function mapping each raw output to ``(B, T, D)``.
    """

    def __init__(
        self, model: nn.Module, names: Iterable[str], view: TokenView | None = None
    ) -> None:
        self.names = list(dict.fromkeys(names))  # ordered, unique
        self.modules = {n: resolve_module(model, n) for n in self.names}
        self.view = view
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._recording = False
        self._attached_by_enter = False

    # -- hook lifecycle ---------------------------------------------------------------------
    def attach(self) -> FeatureTaps:
        """Register the hooks (idempotent). Use for a whole run, e.g. with torch.compile."""
        if not self._handles:
            _make_compile_check_hooks()
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def detach(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> FeatureTaps:
        self._attached_by_enter = not self.attached
        self.attach()
        self.features = {}
        self._recording = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._recording = False
        if self._attached_by_enter:
            self.detach()
        if exc[0] is not None:  # an exception in the forward: keep nothing alive
            self.features = {}

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._recording:
                return
            if name in self.features:
                raise RuntimeError(
                    f"module {name!r} ran twice inside one capture; LayerSync taps expect one "
                    "forward per `with` block (call pop() between forwards)"
                )
            self.features[name] = self.view(output) if self.view else first_of_tuple(output)

        return hook

    # -- results ----------------------------------------------------------------------------
    def pop(self) -> dict[str, torch.Tensor]:
        """Return the captured features and release them from the taps."""
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise RuntimeError(
                f"no output was captured for {missing}: were they called inside the `with` block?"
            )
        features, self.features = self.features, {}
        return features

    def __repr__(self) -> str:
        return f"FeatureTaps({self.names}, attached={self.attached})"


def tap_names(blocks: str | Sequence[str], model: nn.Module | None = None) -> list[str]:
    """Ordered block names: a list as given, or every child of the container named ``blocks``.

    ``tap_names("blocks", model)`` -> ``["blocks.0", "blocks.1", ...]`` for a ModuleList/Sequential.
    """
    if not isinstance(blocks, str):
        return list(blocks)
    if model is None:
        raise ValueError("a model is needed to expand a block container name")
    container = resolve_module(model, blocks)
    names = [f"{blocks}.{child}" for child, _ in container.named_children()]
    if not names:
        raise ValueError(f"{blocks!r} has no child modules to use as blocks")
    return names


def _make_compile_check_hooks() -> None:
    """torch.compile reuses one graph for every instance of a module class and, by default,
    does not check their hooks when it does (``skip_nnmodule_hook_guards``): a graph traced
    for a model without taps (the vanilla arm of an A/B run) would then run our tapped model
    and silently skip the hooks. Make it check them; a model with taps gets its own graph."""
    import torch._dynamo

    torch._dynamo.config.skip_nnmodule_hook_guards = False
