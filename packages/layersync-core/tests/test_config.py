"""Run config: presets < TOML file < overrides, value typing, error messages, TOML round trip."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from layersync.config import (
    ConfigError,
    config_class,
    load_presets,
    parse_override,
    read_toml,
    resolve,
    save,
    to_toml,
)

# --------------------------------------------------------------------------------------------
# A tiny plugin: two sections and two presets (config.resolve needs nothing else)
# --------------------------------------------------------------------------------------------


class DataSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = "embedded"
    image_size: int = 8
    flip: bool = True


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = 4
    hidden: int = 32
    dropout: float = 0.0
    widths: list[int] = [8, 16]


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()


PLUGIN = SimpleNamespace(
    name="toy",
    config_model=ToyConfig,
    presets={
        "demo": {"train": {"steps": 50, "batch_size": 8}, "model": {"depth": 2}},
        "big": {"train": {"steps": 5000}, "model": {"depth": 12, "hidden": 64}},
    },
    default_preset="demo",
)


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as err:
        resolve(PLUGIN, **kwargs)
    return str(err.value)


# --------------------------------------------------------------------------------------------
# Resolution order
# --------------------------------------------------------------------------------------------


def test_default_preset_applies_over_model_defaults() -> None:
    cfg = resolve(PLUGIN)
    assert (cfg.modality, cfg.preset) == ("toy", "demo")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.model.depth) == (50, 8, 2)
    assert (cfg.train.lr, cfg.model.hidden, cfg.data.root) == (1e-4, 32, "embedded")

    cfg = resolve(PLUGIN, preset="big")
    assert cfg.preset == "big"
    assert (cfg.train.steps, cfg.train.batch_size, cfg.model.depth) == (5000, 64, 12)


def test_file_overrides_preset_and_overrides_override_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'preset = "big"\n[train]\nlr = 0.001\nsteps = 300\n[model]\ndepth = 16\n',
    )
    cfg = resolve(PLUGIN, file=path)
    assert cfg.preset == "big"  # the file chose the preset
    assert (cfg.model.hidden, cfg.train.lr) == (64, 0.001)  # preset, file
    assert (cfg.train.steps, cfg.model.depth) == (300, 16)  # file beats preset

    cfg = resolve(PLUGIN, file=path, overrides=["model.depth=20", "train.lr=3e-4"])
    assert (cfg.model.depth, cfg.train.lr, cfg.train.steps) == (20, 3e-4, 300)

    cfg = resolve(PLUGIN, file=path, preset="demo")  # an explicit preset beats the file's
    assert (cfg.preset, cfg.train.batch_size, cfg.model.hidden) == ("demo", 8, 32)


@pytest.mark.parametrize(
    ("override", "get", "expected"),
    [
        ("train.steps=100", lambda c: c.train.steps, 100),
        ("train.lr=3e-4", lambda c: c.train.lr, 3e-4),
        ("train.grad_clip=1", lambda c: c.train.grad_clip, 1.0),
        ("train.compile=true", lambda c: c.train.compile, True),
        ("data.flip=false", lambda c: c.data.flip, False),
        ("model.widths=[1, 2, 3]", lambda c: c.model.widths, [1, 2, 3]),
        ("train.betas=[0.8, 0.95]", lambda c: c.train.betas, (0.8, 0.95)),
        ("layersync.time_range=[0.0, 0.5]", lambda c: c.layersync.time_range, (0.0, 0.5)),
        ("layersync.pairs=8<-16", lambda c: c.layersync.pairs, "8<-16"),
        ("layersync.pairs=4<-8,6<-12", lambda c: c.layersync.pairs, "4<-8,6<-12"),
        ('layersync.pairs="8<-16"', lambda c: c.layersync.pairs, "8<-16"),
        ("data.root=/data/my images", lambda c: c.data.root, "/data/my images"),
        ("run.out_dir=/tmp/runs", lambda c: c.run.out_dir, Path("/tmp/runs")),
        (" train.precision = bf16 ", lambda c: c.train.precision, "bf16"),
    ],
)
def test_override_values_are_typed(override: str, get, expected: Any) -> None:
    value = get(resolve(PLUGIN, overrides=[override]))
    assert value == expected
    assert type(value) is type(expected)


def test_parse_override() -> None:
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("a.b.c = x=y") == (["a", "b", "c"], "x=y")
    for bad in ("train.steps", ".steps=3", "train..steps=3"):
        with pytest.raises(ConfigError, match="override"):
            parse_override(bad)


# --------------------------------------------------------------------------------------------
# Errors: one line per problem, naming source, key and value
# --------------------------------------------------------------------------------------------


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    msg = config_error(overrides=["train.stpes=3"])
    assert msg == "override: train.stpes: unknown key (did you mean 'steps'?)"

    path = write(tmp_path, "[train]\nstpes = 3\n[modle]\ndepth = 3\n")
    lines = config_error(file=path).splitlines()
    assert lines == [
        f"{path}: train.stpes: unknown key (did you mean 'steps'?)",
        f"{path}: modle: unknown key (did you mean 'model'?)",
    ]
    msg = config_error(overrides=["data.zzz=1"])
    assert msg == "override: data.zzz: unknown key (expected one of: root, image_size, flip)"


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    msg = config_error(overrides=["train.lr=fast"])
    assert "\n" not in msg
    assert msg.startswith("override: train.lr: ")
    assert msg.endswith("(got 'fast')")

    path = write(tmp_path, "[train]\nlr = 'fast'\n")
    msg = config_error(file=path)
    assert msg.startswith(f"{path}: train.lr: ") and msg.endswith("(got 'fast')")

    msg = config_error(overrides=["layersync.time_range=[0.5, 0.1]"])
    assert msg.startswith("override: layersync.time_range: ")
    assert "low must not exceed high" in msg


def test_several_problems_give_one_line_each_with_their_source(tmp_path: Path) -> None:
    path = write(tmp_path, "[train]\nsteps = -1\n[model]\ndepth = 'deep'\n")
    lines = config_error(file=path, overrides=["train.lr=fast", "data.colour=1"]).splitlines()
    assert len(lines) == 4
    by_key = {line.split(": ")[1]: line for line in lines}
    assert by_key["train.steps"].startswith(f"{path}: ") and "(got -1)" in by_key["train.steps"]
    assert by_key["model.depth"].startswith(f"{path}: ") and "'deep'" in by_key["model.depth"]
    assert by_key["train.lr"].startswith("override: ") and "'fast'" in by_key["train.lr"]
    assert by_key["data.colour"].startswith("override: ")


def test_bad_preset_lists_available_ones(tmp_path: Path) -> None:
    msg = config_error(preset="huge")
    assert "'huge'" in msg and "available: big, demo" in msg and "\n" not in msg
    path = write(tmp_path, 'preset = "tiny"\n')
    assert "'tiny'" in config_error(file=path)


def test_missing_or_invalid_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert config_error(file=missing) == f"{missing}: config file not found"

    path = write(tmp_path, "[train\nsteps = 3\n", name="broken.toml")
    msg = config_error(file=path)
    assert msg.startswith(f"{path}: not valid TOML") and "line 1" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        read_toml(path)


def test_modality_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path, 'modality = "audio"\n')
    msg = config_error(file=path)
    assert msg.startswith(f"{path}: ") and "'audio'" in msg and "'toy'" in msg
    msg = config_error(overrides=["modality=audio"])
    assert msg.startswith("override: ") and "'audio'" in msg and "'toy'" in msg


def test_plugin_section_may_not_shadow_a_core_section() -> None:
    class Clash(BaseModel):
        train: DataSection = DataSection()

    with pytest.raises(TypeError, match="'train'"):
        config_class(Clash)


def test_plugin_checks_across_its_sections_apply_to_the_run_config() -> None:
    """A plugin config's model validator (a check across two of its sections) is part of the
    run config: it rejects a bad combination in one line without an empty key."""
    from pydantic import model_validator

    class Checked(ToyConfig):
        @model_validator(mode="after")
        def _fits(self) -> Checked:
            if self.model.hidden < self.data.image_size:
                raise ValueError(f"model.hidden = {self.model.hidden} < data.image_size")
            return self

    plugin = SimpleNamespace(**{**vars(PLUGIN), "config_model": Checked})
    assert resolve(plugin, overrides=["model.hidden=8"]).model.hidden == 8
    with pytest.raises(ConfigError) as err:
        resolve(plugin, overrides=["model.hidden=4"])
    assert str(err.value) == "config: model.hidden = 4 < data.image_size"


# --------------------------------------------------------------------------------------------
# TOML output
# --------------------------------------------------------------------------------------------


def test_to_toml_round_trip(tmp_path: Path) -> None:
    overrides = [
        "train.lr=3e-4",
        "train.betas=[0.8, 0.95]",
        "train.grad_clip=1.5",
        "layersync.pairs=4<-8,6<-12",
        "layersync.time_range=[0.25, 0.75]",
        "model.widths=[3, 5]",
        "data.root=/data/x",
        "run.name=roundtrip",
    ]
    cfg = resolve(PLUGIN, preset="big", overrides=overrides)
    text = to_toml(cfg)
    path = write(tmp_path, text, name="config.toml")
    back = resolve(PLUGIN, file=path, preset="big")
    assert back.model_dump() == cfg.model_dump()
    assert type(back) is type(cfg)

    save(cfg, tmp_path / "saved.toml")
    assert (tmp_path / "saved.toml").read_text() == text
    assert read_toml(path)["modality"] == "toy"

    plain = resolve(PLUGIN)  # None values (run.name, grad_clip, ...) are left out and come back
    path = write(tmp_path, to_toml(plain), name="plain.toml")
    assert resolve(PLUGIN, file=path).model_dump() == plain.model_dump()


def test_numeric_text_and_preset_override() -> None:
    """`run.name=2024` is a name, not an error; `preset=big` as an override selects that preset."""
    cfg = resolve(PLUGIN, overrides=["run.name=2024"])
    assert cfg.run.name == "2024"
    cfg = resolve(PLUGIN, overrides=["preset=big"])
    assert cfg.preset == "big" and (cfg.train.steps, cfg.model.depth) == (5000, 12)


# --------------------------------------------------------------------------------------------
# Presets as TOML files inside a package
# --------------------------------------------------------------------------------------------


def test_load_presets_reads_each_toml_file_of_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "toy_presets_pkg"
    (pkg / "presets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "presets" / "demo.toml").write_text("[train]\nsteps = 50\n\n[model]\ndepth = 2\n")
    (pkg / "presets" / "big.toml").write_text("[model]\ndepth = 12\nhidden = 64\n")
    (pkg / "presets" / "notes.txt").write_text("not a preset")
    monkeypatch.syspath_prepend(str(tmp_path))
    presets = load_presets("toy_presets_pkg")
    assert presets == {
        "big": {"model": {"depth": 12, "hidden": 64}},
        "demo": {"train": {"steps": 50}, "model": {"depth": 2}},
    }
    # a preset file and a --config file are one format: the same resolution result
    plugin = SimpleNamespace(**{**vars(PLUGIN), "presets": presets})
    via_preset = resolve(plugin, preset="big")
    via_file = resolve(plugin, file=pkg / "presets" / "big.toml", preset="demo")
    assert via_preset.model == via_file.model and via_preset.model.depth == 12

    (pkg / "presets" / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_presets("toy_presets_pkg")
    with pytest.raises(ConfigError, match="no preset folder 'nowhere'"):
        load_presets("toy_presets_pkg", "nowhere")


def test_read_toml_takes_text_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "[train]\nsteps = 3\n")
    assert read_toml(str(path)) == read_toml(path) == {"train": {"steps": 3}}
