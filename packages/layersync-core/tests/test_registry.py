"""Plugin discovery through real entry points of fake distributions written to tmp_path."""

from __future__ import annotations

import sys

import pytest

from layersync.plugin import API_VERSION, Modality
from layersync.registry import GROUP, PluginError, installed, load, status

# --------------------------------------------------------------------------------------------
# Test-double plugins (only the registry's checks run; the data/model methods are never called)
# --------------------------------------------------------------------------------------------

TEMPLATE = '''
from pydantic import BaseModel

from layersync.plugin import Modality


class Config(BaseModel):
    pass


class Double(Modality):
    """Test double: satisfies the contract's shape, not meant to train."""

    name = {name!r}
    description = "test double {name}"
    config_model = {config_model}
    presets = {presets!r}
    api_version = {api_version!r}

    def build_dataset(self, cfg, split):
        raise NotImplementedError("test double")

    def build_model(self, cfg):
        raise NotImplementedError("test double")

    def block_names(self, cfg, model):
        raise NotImplementedError("test double")

    def default_layersync(self, cfg):
        raise NotImplementedError("test double")

    def build_objective(self, cfg):
        raise NotImplementedError("test double")

    def sample(self, model, cfg, n, condition, generator):
        raise NotImplementedError("test double")

    def write_samples(self, samples, out_dir, cfg, prefix=""):
        raise NotImplementedError("test double")


plugin = Double()
'''


def double(
    name: str,
    *,
    presets: dict | None = None,
    api_version: int = API_VERSION,
    config_model: str = "Config",
) -> str:
    """Source of a module defining ``plugin``, a Modality test double."""
    return TEMPLATE.format(
        name=name,
        presets={"demo": {}} if presets is None else presets,
        api_version=api_version,
        config_model=config_model,
    )


def add_plugin(plugin_dists, dist: str, name: str, source: str, version: str = "0.1.0") -> str:
    """A distribution ``dist`` with one modality ``name`` in its own module; returns the module."""
    module = f"{dist.replace('-', '_')}_plugin"
    plugin_dists(dist, {GROUP: {name: f"{module}:plugin"}}, {f"{module}.py": source}, version)
    return module


# --------------------------------------------------------------------------------------------
# Discovery and lazy loading
# --------------------------------------------------------------------------------------------


def test_installed_lists_without_importing_and_load_imports_only_one(plugin_dists) -> None:
    one = add_plugin(plugin_dists, "toy-one", "toyone", double("toyone"), version="1.2.3")
    two = add_plugin(plugin_dists, "toy-two", "toytwo", double("toytwo"))

    found = installed()
    assert {"toyone", "toytwo"} <= set(found)
    info = found["toyone"]
    assert (info.distribution, info.version, info.target) == ("toy-one", "1.2.3", f"{one}:plugin")
    assert one not in sys.modules and two not in sys.modules

    plugin = load("toyone")
    assert isinstance(plugin, Modality) and plugin.name == "toyone"
    assert one in sys.modules and two not in sys.modules
    assert status("toytwo") == (True, "test double toytwo")


def test_unknown_name_lists_installed_and_hints_the_package(plugin_dists, monkeypatch) -> None:
    import layersync.registry as registry

    add_plugin(plugin_dists, "toy-one", "toyone", double("toyone"))
    real = registry.entry_points  # hide a really installed layersync-audio: no skip in CI
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [e for e in real(group=group) if e.name != "audio"]
    )
    assert "audio" not in installed() and "toyone" in installed()
    with pytest.raises(PluginError) as err:
        load("audio")
    msg = str(err.value)
    assert "'audio'" in msg and "toyone" in msg and "pip install layersync-audio" in msg

    with pytest.raises(PluginError, match="providing the 'tabular' modality"):
        load("tabular")


def test_broken_plugin_is_reported_and_others_still_load(plugin_dists) -> None:
    add_plugin(plugin_dists, "toy-broken", "broken", "raise RuntimeError('kaput at import')\n")
    add_plugin(plugin_dists, "toy-deps", "needsdep", "import layersync_no_such_dependency\n")
    add_plugin(plugin_dists, "toy-one", "toyone", double("toyone"))
    assert {"broken", "needsdep", "toyone"} <= set(installed())  # listing imports nothing

    with pytest.raises(PluginError) as err:
        load("broken")
    msg = str(err.value)
    assert "toy-broken" in msg and "RuntimeError: kaput at import" in msg
    with pytest.raises(PluginError, match=r"toy-deps.*layersync_no_such_dependency"):
        load("needsdep")

    assert load("toyone").name == "toyone"
    ok, message = status("broken")
    assert not ok and "kaput at import" in message


# --------------------------------------------------------------------------------------------
# Contract checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("plugin = object()\n", "not an instance of layersync.plugin.Modality"),
        (double("toybad", presets={"full": {}}), "presets['demo']"),
        (double("toybad", config_model="dict"), "config_model"),
        (double("toybad", api_version=API_VERSION + 1), f"targets plugin API {API_VERSION + 1}"),
        (double("another"), "calls itself 'another'"),
    ],
    ids=["not-modality", "no-demo-preset", "bad-config-model", "api-version", "wrong-name"],
)
def test_contract_violations_are_clear(plugin_dists, source: str, words: str) -> None:
    add_plugin(plugin_dists, "toy-bad", "toybad", source, version="0.9.0")
    with pytest.raises(PluginError) as err:
        load("toybad")
    msg = str(err.value)
    assert words in msg
    assert "'toybad'" in msg and "toy-bad" in msg


def test_same_name_from_two_distributions_is_an_error(plugin_dists) -> None:
    add_plugin(plugin_dists, "toy-alpha", "twin", double("twin"))
    add_plugin(plugin_dists, "toy-beta", "twin", double("twin"))
    for call in (installed, lambda: load("twin")):
        with pytest.raises(PluginError) as err:
            call()
        msg = str(err.value)
        assert "'twin'" in msg and "toy-alpha" in msg and "toy-beta" in msg
