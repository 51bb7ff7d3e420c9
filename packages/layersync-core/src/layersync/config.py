"""Run configuration: pydantic models, TOML files, presets and dotted ``key=value`` overrides.

Resolution order (later wins): model defaults < preset < TOML file < command-line overrides.
A run config is the core sections below plus the plugin's own sections (``config_model``),
combined into one pydantic model with ``extra="forbid"`` everywhere, so a typo fails and is
named. Errors read ``train.lr: Input should be a valid number (got 'fast')``.
"""

from __future__ import annotations

import difflib
import importlib.resources
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from layersync.pairs import check_order, parse_pairs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:  # keeps `import layersync.config` free of torch
    from importlib.resources.abc import Traversable

    from layersync.plugin import Modality


class ConfigError(ValueError):
    """A config problem, already phrased for the user (file, key, value, expectation)."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    # numbers given where text is expected (`run.name=2024`) are taken as text
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


# --------------------------------------------------------------------------------------------
# Core sections
# --------------------------------------------------------------------------------------------


class RunSection(Section):
    name: str | None = Field(None, description="run directory name (default: modality-preset)")
    out_dir: Path = Field(Path("runs"), description="parent of run directories")
    seed: int = 0


class TrainSection(Section):
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(64, gt=0, description="global batch, split across ranks")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm; None = off")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU"
    )
    compile: bool = False
    matmul: Literal["tf32", "strict"] = Field(
        "tf32",
        description="float32 matmuls/convolutions: tf32 (tensor cores where the GPU has them) or "
        "strict IEEE fp32; every command that loads the run uses the same ($LAYERSYNC_MATMUL "
        "overrides)",
    )
    deterministic: bool = Field(
        False,
        description="deterministic CUDA kernels (cuBLAS workspace, math attention): a resumed run "
        "repeats bit for bit on GPUs too, slower ($LAYERSYNC_DETERMINISTIC overrides)",
    )
    distributed: Literal["ddp", "fsdp"] = "ddp"
    num_workers: int = Field(0, ge=0)
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a NaN/inf loss or gradient: stop the run (naming the step and term), or "
        "skip that step's update (counted as `skipped` in metrics.jsonl)",
    )
    max_skipped: int = Field(
        10, gt=0, description="with nonfinite = skip: stop after this many consecutive skips"
    )


class LayerSyncSection(Section):
    enabled: bool = True
    pairs: str | None = Field(None, description="'8<-16' or '4<-8,6<-12'; None = plugin default")
    weight: float | None = Field(None, ge=0, description="λ; None = plugin default")
    schedule: Literal["constant", "warmup", "decay"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_start: int = Field(0, ge=0)
    decay_steps: int = Field(0, ge=0)
    final_weight: float = Field(0.0, ge=0)
    time_range: tuple[float, float] | None = Field(
        None,
        description="apply only for t in [low, high]; t in [0, 1], 1 = clean data, 0 = noise "
        "(a discrete diffusion at step s of T is at t = 1 - s/T)",
    )

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, v: str | None) -> str | None:
        if v is None:
            return v
        pairs = parse_pairs(v)  # syntax; the depth is checked against the model later
        check_order(pairs)
        return ",".join(map(str, pairs))

    @field_validator("time_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"low must not exceed high, got {list(v)}")
        return v


class EMASection(Section):
    decay: float = Field(0.9999, ge=0, le=1)
    warmup: bool = Field(False, description="use min(decay, (1+n)/(10+n)) early on")


class CheckpointSection(Section):
    every: int = Field(1000, gt=0, description="steps between checkpoints")
    keep_last: int = Field(3, gt=0)


class LogSection(Section):
    every: int = Field(10, gt=0, description="steps between metric lines")
    tensorboard: bool = False
    wandb: bool = Field(False, description="log to Weights & Biases (extra `wandb`)")
    wandb_project: str = Field("layersync", description="W&B project")
    wandb_entity: str | None = Field(None, description="W&B entity (team); None = default")
    progress: bool = True
    sample_every: int = Field(0, ge=0, description="steps between EMA sample grids; 0 = end only")
    sample_count: int = Field(16, gt=0)
    eval_every: int = Field(0, ge=0, description="steps between metric evaluations; 0 = end only")


class CoreConfig(Section):
    """Sections every run has, whatever the modality."""

    modality: str
    preset: str | None = None
    run: RunSection = RunSection()
    train: TrainSection = TrainSection()
    layersync: LayerSyncSection = LayerSyncSection()
    ema: EMASection = EMASection()
    checkpoint: CheckpointSection = CheckpointSection()
    log: LogSection = LogSection()


# --------------------------------------------------------------------------------------------
# Combining with a plugin
# --------------------------------------------------------------------------------------------


@cache
def config_class(plugin_config: type[BaseModel]) -> type[CoreConfig]:
    """The run-config model for a plugin: core sections + the plugin's sections, and the
    plugin config's own model validators (checks across its sections; they see the run
    config, so ``self.data`` etc. are the plugin's sections as in the plugin class)."""
    fields: dict[str, Any] = {}
    for name, info in plugin_config.model_fields.items():
        if name in CoreConfig.model_fields:
            raise TypeError(f"plugin config section {name!r} clashes with a core section")
        fields[name] = (info.annotation, info)
    validators = {
        name: model_validator(mode=d.info.mode)(d.func)  # type: ignore[call-overload]
        for name, d in plugin_config.__pydantic_decorators__.model_validators.items()
    }
    return create_model(  # type: ignore[call-overload]
        f"{plugin_config.__name__}Run", __base__=CoreConfig, __validators__=validators, **fields
    )


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). Values are TOML literals, else strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = dict(data)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        out = deep_merge(out, nested)
    return out


def with_overrides(plugin: Modality, cfg: BaseModel, overrides: Sequence[str]) -> CoreConfig:
    """A validated copy of a resolved config with dotted ``key=value`` overrides applied."""
    data = apply_overrides(cfg.model_dump(), overrides)
    keys = [parse_override(o)[0] for o in overrides]
    return validate(plugin, data, source="override", overridden=keys)


def read_toml(path: str | Path | Traversable) -> dict[str, Any]:
    """A TOML config file (``--config`` or a plugin preset) as a dict; errors name the file."""
    if isinstance(path, str):
        path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file, expected TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def load_presets(package: str, folder: str = "presets") -> dict[str, dict[str, Any]]:
    """A plugin's presets: every ``<folder>/<name>.toml`` inside ``package``, by name.

    A preset file is a partial run config, the same format as ``--config`` files and
    ``layersync config show`` (read by the same ``read_toml``)::

        PRESETS = load_presets("layersync_image")   # layersync_image/presets/demo.toml -> "demo"
    """
    root = importlib.resources.files(package).joinpath(folder)
    if not root.is_dir():
        raise ConfigError(f"{package}: no preset folder {folder!r} inside the package")
    files = sorted((f for f in root.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)
    return {f.name.removesuffix(".toml"): read_toml(f) for f in files}


def resolve(
    plugin: Modality,
    *,
    file: str | Path | None = None,
    preset: str | None = None,
    overrides: Iterable[str] = (),
) -> CoreConfig:
    """Build and validate the run config for ``plugin``."""
    overrides = list(overrides)
    file_data = read_toml(file) if file is not None else {}
    source = str(file) if file is not None else "config"
    if file_data.get("modality", plugin.name) != plugin.name:
        raise ConfigError(
            f"{source}: modality = {file_data['modality']!r} but the command asked for "
            f"{plugin.name!r}"
        )
    from_override = [v for keys, v in map(parse_override, overrides) if keys == ["preset"]]
    preset = (
        preset
        or (from_override[-1] if from_override else None)
        or file_data.get("preset")
        or plugin.default_preset
    )
    if preset not in plugin.presets:
        raise ConfigError(
            f"unknown preset {preset!r} for modality {plugin.name!r}; "
            f"available: {', '.join(sorted(plugin.presets))}"
        )
    data = deep_merge({"modality": plugin.name}, plugin.presets[preset])
    data = deep_merge(data, file_data)
    data["preset"] = preset
    data = apply_overrides(data, overrides)
    data["preset"] = preset  # `preset=` overrides select the preset above, not just the label
    if data["modality"] != plugin.name:  # only an override can have changed it
        raise ConfigError(
            f"override: modality = {data['modality']!r} but the command asked for {plugin.name!r}"
        )
    overridden = [parse_override(text)[0] for text in overrides]
    return validate(plugin, data, source=source, overridden=overridden)


def validate(
    plugin: Modality,
    data: Mapping[str, Any],
    source: str = "config",
    overridden: Iterable[Sequence[str]] = (),
) -> CoreConfig:
    model = config_class(plugin.config_model)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, model, source, overridden)) from None


def format_errors(
    error: ValidationError,
    model: type[BaseModel],
    source: str,
    overridden: Iterable[Sequence[str]] = (),
) -> str:
    """One line per problem: ``source: key: message (got value)``, with a did-you-mean.

    A problem under a key set by a ``key=value`` override names ``override`` as its source.
    """
    overridden = [tuple(keys) for keys in overridden]
    lines = []
    for err in error.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        where = source
        if any(loc[: len(keys)] == keys for keys in overridden):
            where = "override"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            known = _known_keys(model, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            elif known:
                msg += f" (expected one of: {', '.join(known)})"
            lines.append(f"{where}: {key}: {msg}")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, (dict, BaseModel)) else f" (got {got!r})"
        lines.append(f"{where}: {key}: {msg}{shown}" if key else f"{where}: {msg}{shown}")
    return "\n".join(lines)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def to_toml(cfg: BaseModel) -> str:
    """The resolved config as TOML (None values are omitted: TOML has no null)."""
    return tomli_w.dumps(_plain(cfg.model_dump(mode="json", exclude_none=True)))


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        # tomli-w needs scalars before tables for a readable file
        scalars = {k: _plain(v) for k, v in data.items() if not isinstance(v, dict)}
        tables = {k: _plain(v) for k, v in data.items() if isinstance(v, dict)}
        return {**scalars, **tables}
    if isinstance(data, tuple):
        return [_plain(v) for v in data]
    return data


def save(cfg: BaseModel, path: str | Path) -> None:
    from layersync.fileio import atomic_write

    atomic_write(path, to_toml(cfg))
