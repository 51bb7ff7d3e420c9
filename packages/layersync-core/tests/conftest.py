"""Shared test fixtures for layersync-core."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# --------------------------------------------------------------------------------------------
# Fake installed distributions (registry, CLI and engine tests) -- owner: registry tests
# --------------------------------------------------------------------------------------------


def make_plugin_dist(
    tmp_path: Path,
    dist_name: str,
    entry_points: Mapping[str, Mapping[str, str]],
    files: Mapping[str, str],
    version: str = "0.1.0",
) -> Path:
    """Write a distribution that ``importlib.metadata`` discovers when ``tmp_path`` is on sys.path.

    ``entry_points`` maps a group to ``{name: "module:attr"}``, e.g.
    ``{"layersync.modalities": {"toy": "toy_plugin:plugin"}}``; ``files`` maps paths relative to
    ``tmp_path`` (``"toy_plugin.py"``, ``"pkg/__init__.py"``) to their source. Returns the
    ``.dist-info`` directory. Nothing is pip-installed.
    """
    info = tmp_path / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=False)
    info.joinpath("METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n"
    )
    sections = []
    for group, eps in entry_points.items():
        lines = [f"[{group}]", *(f"{name} = {target}" for name, target in eps.items())]
        sections.append("\n".join(lines))
    info.joinpath("entry_points.txt").write_text("\n\n".join(sections) + "\n")
    for rel, source in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return info


@pytest.fixture(scope="session")
def write_plugin_dist() -> Callable[..., Path]:
    """:func:`make_plugin_dist` as a fixture: test modules never import ``conftest`` (several
    packages have one, and the module name would resolve to whichever was imported first)."""
    return make_plugin_dist


@pytest.fixture
def plugin_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Factory ``(dist_name, entry_points, files) -> dist-info path`` on a fresh sys.path entry.

    The directory is prepended to sys.path for this test only, and every module the fake
    distributions define is dropped from sys.modules afterwards so tests stay independent.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: set[str] = set()

    def make(
        dist_name: str,
        entry_points: Mapping[str, Mapping[str, str]],
        files: Mapping[str, str],
        version: str = "0.1.0",
    ) -> Path:
        info = make_plugin_dist(site, dist_name, entry_points, files, version)
        modules.update(Path(rel).parts[0].removesuffix(".py") for rel in files)
        importlib.invalidate_caches()
        return info

    yield make
    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            del sys.modules[name]
    importlib.invalidate_caches()


# --------------------------------------------------------------------------------------------
# The two toy plugins as installed distributions (engine, CLI, distributed tests)
# -- owner: engine tests
# --------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[3]
CORE_SRC = REPO / "packages" / "layersync-core" / "src"
TOY_IMAGE_SRC = REPO / "templates" / "layersync-toy-image" / "src"
TOY_SEQUENCE_DIR = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="session")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One site dir with dist-infos for ``toy-image`` and ``toy-sequence`` (metadata only).

    The dist-infos point at the existing module files, which stay where they are: put the site
    dir, the template's ``src`` and ``tests/plugins`` on the path (``toy_env``/``toy_plugins``).
    """
    site = tmp_path_factory.mktemp("toy-site")
    make_plugin_dist(
        site,
        "layersync-toy-image",
        {"layersync.modalities": {"toy-image": "layersync_toy_image.plugin:plugin"}},
        {},
    )
    make_plugin_dist(
        site,
        "layersync-toy-sequence",
        {"layersync.modalities": {"toy-sequence": "toy_sequence:plugin"}},
        {},
    )
    return site


def toy_path(site: Path) -> list[str]:
    """The path entries that make both toy plugins (and the core) importable and discoverable."""
    return [str(site), str(TOY_IMAGE_SRC), str(TOY_SEQUENCE_DIR), str(CORE_SRC)]


@pytest.fixture(scope="session")
def toy_env(toy_site: Path) -> dict[str, str]:
    """Environment for ``python -m layersync`` / ``torchrun`` subprocesses that see both toys."""
    import os

    env = dict(os.environ)
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(toy_path(toy_site) + ([extra] if extra else []))
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


@pytest.fixture
def toy_plugins(toy_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process: ``layersync.registry.load("toy-image")`` / ``("toy-sequence")`` work."""
    for entry in reversed(toy_path(toy_site)):
        monkeypatch.syspath_prepend(entry)
    return toy_site


# --------------------------------------------------------------------------------------------
# Threads: the test models are tiny; intra-op threads only add overhead (and contention)
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# One CLI runner for every command-line test (in-process, stdout and stderr apart)
# --------------------------------------------------------------------------------------------


@dataclass
class CliResult:
    """What one ``layersync ...`` invocation did."""

    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def output(self) -> str:
        """stdout then stderr (for assertion messages and text checks)."""
        return self.stdout + self.stderr

    @property
    def lines(self) -> list[str]:
        """The non-empty lines on stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("error:")]


def invoke_cli(*args: str | Path) -> CliResult:
    from typer.testing import CliRunner

    from layersync.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return CliResult(result.exit_code, result.stdout, result.stderr, result.exception)


@pytest.fixture
def layersync_cli(toy_plugins: Path) -> Callable[..., CliResult]:
    """``layersync_cli("train", "-m", "toy-image", ...)`` -> ``CliResult`` (toy plugins visible)."""
    return invoke_cli


@pytest.fixture(scope="session")
def cli_invoke() -> Callable[..., CliResult]:
    """The same runner for module-scoped fixtures (put the plugins on the path yourself)."""
    return invoke_cli


@pytest.fixture(scope="session")
def toy_sys_path(toy_site: Path) -> list[str]:
    """The path entries that make both toy plugins importable (for module-scoped fixtures)."""
    return toy_path(toy_site)
