"""The modality contract: what a plugin gives the core.

A plugin is an instance of a ``Modality`` subclass exposed through the entry-point group
``layersync.modalities``::

    [project.entry-points."layersync.modalities"]
    image = "layersync_image.plugin:plugin"

The engine only ever talks to a plugin through this class. ``cfg`` below is the resolved run
config: the core sections (``run``, ``train``, ``layersync``, ...) plus the plugin's own sections
declared by ``config_model`` (conventionally ``data``, ``model``, ``sampler``, ``metric``).

Time convention (one for every plugin): ``t`` is ``layersync.flow``'s time, in [0, 1], with
t = 1 the clean data and t = 0 pure noise. A discrete diffusion objective at step s of T reports
t = 1 - s / T. ``layersync.time_range``, ``ObjectiveOutput.t``, ``Objective.loss_at`` and
``layersync probe --t`` all use it, so one time range gates the same noise levels everywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import Dataset, default_collate

from layersync.taps import TokenView, unwrap_model

API_VERSION = 1
"""Bumped when the contract changes incompatibly; plugins declare the version they target."""


@dataclass
class ObjectiveOutput:
    """What a diffusion/flow objective reports for one batch.

    Attributes:
        loss: per-sample diffusion loss ``(B,)`` (the engine takes the mean).
        t: per-sample time ``(B,)`` in the core convention (t=1 clean, t=0 noise; a discrete
            objective at step s of T reports 1 - s/T), for time gating; or None.
        token_mask: ``(B, T)`` valid-token mask for the tapped features (padding and
            condition tokens excluded), or None when every token counts.
    """

    loss: torch.Tensor
    t: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None


class Objective(Protocol):
    """Computes the diffusion loss of a batch with ONE forward of ``model``.

    The LayerSync taps fill during that forward, so the objective must call the model exactly
    once per batch (a classifier-free-guidance dropout is fine: it happens inside the call).
    """

    def __call__(
        self, model: nn.Module, batch: Any, generator: torch.Generator | None = None
    ) -> ObjectiveOutput: ...


class FixedTimeObjective(Objective, Protocol):
    """An objective that can also be evaluated at a given time and noise (optional).

    ``loss_at`` is what the low-variance ``val_loss`` convergence metric calls: the same
    per-sample loss as ``__call__``, but at the per-sample time ``t`` ``(B,)`` (core convention)
    with the given ``noise`` (shaped like the model input) and no condition dropout, so two arms
    and two checkpoints see identical inputs (common random numbers). A discrete objective maps
    t to its nearest step. ``noise_like(batch, generator)`` draws noise of the right shape.
    """

    def loss_at(
        self, model: nn.Module, batch: Any, t: torch.Tensor, noise: torch.Tensor
    ) -> ObjectiveOutput: ...

    def noise_like(self, batch: Any, generator: torch.Generator) -> torch.Tensor: ...


@dataclass(frozen=True)
class MetricSpec:
    """How to read one metric a plugin reports: its direction, and whether it is the primary one
    (``bench convergence`` and ``eval`` summaries use the primary metric unless told otherwise)."""

    higher_is_better: bool | None = False
    """True or False; None for a metric with no better direction (MDM's Diversity: closer to
    the real data's value is better), reported but never scored as a gain."""
    primary: bool = False


@dataclass(frozen=True)
class LayerSyncDefaults:
    """The default pair(s) and λ a plugin recommends for a model configuration."""

    pairs: str
    weight: float


class Modality(ABC):
    """Base class of every modality plugin (image, audio, motion, video, third-party)."""

    name: ClassVar[str]
    api_version: ClassVar[int] = API_VERSION
    description: ClassVar[str] = ""
    config_model: ClassVar[type[BaseModel]]
    """Pydantic model whose fields are the plugin's config sections (extra="forbid")."""
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]
    """Named nested overrides (core and plugin sections). Must contain ``"demo"``."""
    default_preset: ClassVar[str] = "demo"
    metrics: ClassVar[Mapping[str, MetricSpec]] = {}
    """The metrics ``evaluate`` reports, by name; exactly one should be ``primary``. When the
    names depend on the config (a sample count or a network in the name), this lists the demo
    preset's and ``metrics_for`` gives a config's."""

    # -- data and model ---------------------------------------------------------------------
    @abstractmethod
    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        """The dataset for ``split`` ("train" or "eval")."""

    def collate(self, items: Sequence[Any]) -> Any:
        """Batch dataset items (default: torch's default_collate)."""
        return default_collate(items)

    @abstractmethod
    def build_model(self, cfg: Any) -> nn.Module:
        """The backbone, randomly initialised (the engine moves it to the device)."""

    def block_names(self, cfg: Any, model: nn.Module) -> list[str]:
        """Ordered dotted names of the tappable blocks: the depth axis pairs index (1-based).

        Default: the children of the model's ``blocks`` ModuleList (``blocks.0``, ``blocks.1``,
        ...), the DiT/SiT layout; override it for any other layout."""
        blocks = getattr(unwrap_model(model), "blocks", None)
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
            raise NotImplementedError(
                f"modality {self.name!r}: {type(model).__name__} has no `blocks` ModuleList; "
                "override Modality.block_names to list the tappable blocks"
            )
        return [f"blocks.{i}" for i in range(len(blocks))]

    def token_view(self, cfg: Any) -> TokenView | None:
        """Maps a block output to ``(B, T, D)``; None when blocks already output that."""
        return None

    def default_layersync(self, cfg: Any) -> LayerSyncDefaults:
        """Recommended pair(s) and λ for this model configuration.

        Default: the paper's SiT-XL/2 choice scaled to the model's depth D,
        ``depth_ratio_pairs(D)``, about round(8 D / 28) <- round(16 D / 28), with λ = 0.2. D is
        counted by building the model once per config (on the CPU, without touching any RNG
        stream); override this method when building the model is expensive."""
        key = cfg.model_dump_json() if hasattr(cfg, "model_dump_json") else repr(cfg)
        depths = self.__dict__.setdefault("_default_depths", {})
        if key not in depths:
            # a real build, not one on the "meta" device: build_model may load or cache data
            # and weights (metric networks, data statistics) that must stay usable
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                model = self.build_model(cfg)
            depths[key] = len(self.block_names(cfg, model))
            del model
        return LayerSyncDefaults(pairs=depth_ratio_pairs(depths[key]), weight=0.2)

    def pair_source(self, cfg: Any, pairs: str, weight: float, depth: int | None) -> str:
        """Where a run's pair and λ come from, stated honestly by ``--dry-run`` and
        ``config show`` (``depth``: the model's block count, None when it cannot be built
        without its data). Default, for a modality the paper gives no pair or λ for: the
        depth-ratio pair is "derived", any other is the plugin's or the config's; override it
        where the paper does give a pair (the image plugin does, per SiT size)."""
        spec = pairs.replace(" ", "")
        if depth is not None and depth >= 2 and spec == depth_ratio_pairs(depth):
            what = f"pair {spec}: derived by the depth-ratio rule, not from the paper"
        elif spec == self.default_layersync(cfg).pairs.replace(" ", ""):
            what = f"pair {spec}: the {self.name} plugin's default, not from the paper"
        else:
            what = f"pair {spec}: set in the config, not from the paper"
        return f"{what}; λ {weight:g}: not from the paper (it gives no pair or λ for {self.name})"

    def describe_data(self, cfg: Any) -> Mapping[str, Any]:
        """What a run keeps of its data beside its config, as JSON (``data.json``, written when
        training starts): the class names or tag vocabulary its conditions index, so samples
        stay readable after the data moves. Default: nothing (no file)."""
        return {}

    # -- training objective -----------------------------------------------------------------
    @abstractmethod
    def build_objective(self, cfg: Any) -> Objective:
        """The per-sample diffusion loss (see ``Objective``)."""

    # -- sampling, outputs, metrics ---------------------------------------------------------
    def conditions(self, cfg: Any, n: int, generator: torch.Generator) -> Any:
        """``n`` conditions for sampling (class labels, texts...); None if unconditional."""
        return None

    @abstractmethod
    def sample(
        self, model: nn.Module, cfg: Any, n: int, condition: Any, generator: torch.Generator
    ) -> Any:
        """Generate ``n`` samples with ``model`` (in eval mode) for ``condition``."""

    def write_samples(self, samples: Any, out_dir: Path, cfg: Any, prefix: str = "") -> list[Path]:
        """Decode and write samples (PNG / WAV / GIF...) into ``out_dir``; return the paths.

        Default: one ``.npy`` file per sample (``<prefix>-0000.npy``, or ``0000.npy`` without a
        prefix) from a tensor/array with the samples on the first axis, or a list of them."""
        if not (torch.is_tensor(samples) or isinstance(samples, (np.ndarray, list, tuple))):
            raise TypeError(
                f"modality {self.name!r}: the default write_samples takes a tensor, an array or a "
                f"list of them, not {type(samples).__name__}; override Modality.write_samples"
            )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, item in enumerate(samples):
            path = out_dir / (f"{prefix}-{i:04d}.npy" if prefix else f"{i:04d}.npy")
            if torch.is_tensor(item):
                item = item.detach().cpu()
                item = (item.float() if item.dtype == torch.bfloat16 else item).numpy()
            np.save(path, np.asarray(item))
            paths.append(path)
        return paths

    def merge_samples(self, parts: list[Path], out_dir: Path, cfg: Any) -> list[Path]:
        """Combine the per-batch outputs of ``write_samples`` (in order) into ``out_dir``.

        Default: leave the parts as they are and return their files."""
        return sorted(p for part in parts for p in part.rglob("*") if p.is_file())

    def evaluate(
        self, model: nn.Module, cfg: Any, out_dir: Path, generator: torch.Generator
    ) -> dict[str, float]:
        """Sample and compute the modality's metric(s). Default: no metric."""
        return {}

    def metrics_for(self, cfg: Any) -> Mapping[str, MetricSpec]:
        """The metrics ``evaluate`` reports under ``cfg`` (``eval``, ``bench convergence`` and
        the conformance suite read this). Default: ``metrics``."""
        return self.metrics

    def check_assets(self, cfg: Any) -> None:
        """Raise ``layersync.assets.AssetError`` (one line naming the config key and the path or
        the package to install) when a file the run will need later is missing: metric
        networks, reference statistics, decoders. ``layersync train`` and ``--dry-run`` call it
        before the run directory exists, so a missing asset never surfaces after training.
        Override it when the plugin reads any such file; a plugin that reads none has nothing
        to check."""
        return None

    def probe_forward(
        self,
        model: nn.Module,
        cfg: Any,
        batch: Any,
        t: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Optional, for ``layersync probe``: ONE forward of ``model`` on ``batch`` noised to the
        fixed time ``t`` (the objective's convention), with the null condition where the model
        has one (so the tapped blocks see only the data, not the label). Returns the batch's
        integer class labels ``(B,)`` and the ``(B, T)`` valid-token mask of the tapped features
        (None when every token counts). Default: not supported."""
        raise NotImplementedError(
            f"modality {self.name!r} does not support `layersync probe` "
            "(its plugin does not implement Modality.probe_forward)"
        )

    def load_weights(self, model: nn.Module, path: Path) -> None:
        """Load external weights (``layersync sample --weights``); default: a safetensors file."""
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)))

    def commands(self) -> Any:
        """Optional modality-specific commands: a ``typer.Typer`` run as ``layersync <name> ...``."""
        return None


def declared_metrics(plugin: Any, cfg: Any = None) -> dict[str, MetricSpec]:
    """What ``plugin`` declares it reports: ``metrics_for(cfg)`` given a config, else the
    static ``metrics`` (empty for an object that declares neither)."""
    metrics_for = getattr(plugin, "metrics_for", None)
    if cfg is not None and callable(metrics_for):
        return dict(metrics_for(cfg) or {})
    return dict(getattr(plugin, "metrics", {}) or {})


def depth_ratio_pairs(depth: int) -> str:
    """The paper's SiT-XL/2 pair 8<-16 of 28 blocks scaled to ``depth`` blocks (1-based):
    ``round(8 D / 28) <- round(16 D / 28)``, kept at least two blocks apart where the depth
    allows (a gap of one is what ``validate_pairs`` warns about) and one apart otherwise
    (D = 2: 1<-2). Needs D >= 2."""
    if depth < 2:
        raise ValueError(f"LayerSync needs at least 2 blocks to pair, got {depth}")
    student = max(1, round(8 * depth / 28))
    teacher = min(depth, max(student + 2, round(16 * depth / 28)))
    return f"{min(student, teacher - 1)}<-{teacher}"


def missing_members(obj: object) -> list[str]:
    """Names the contract requires that ``obj`` lacks (empty when it conforms)."""
    missing = []
    if not isinstance(obj, Modality):
        return ["(not an instance of layersync.plugin.Modality)"]
    for attr in ("name", "config_model", "presets"):
        if not hasattr(obj, attr):
            missing.append(attr)
    if hasattr(obj, "presets") and obj.default_preset not in obj.presets:
        missing.append(f"presets[{obj.default_preset!r}]")
    if hasattr(obj, "config_model") and not (
        isinstance(obj.config_model, type) and issubclass(obj.config_model, BaseModel)
    ):
        missing.append("config_model (a pydantic BaseModel subclass)")
    missing.extend(sorted(getattr(type(obj), "__abstractmethods__", ())))
    return missing
