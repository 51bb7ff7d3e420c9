"""Developer sessions. `nox -s tests` (everything), `nox -s core` (core alone), `nox -s lint`,
`nox -s "plugin(package='layersync-audio')"` (core + one package or template).

Packages are discovered from `packages/*` and `templates/*`: a new package needs no edit here.
"""

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "core", "tests"]

ROOT = Path(__file__).parent
TORCH = "torch==2.14.1"  # installs offline on the project machines; any torch>=2.6 works
CORE = "packages/layersync-core"
PACKAGES = sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob("packages/*/pyproject.toml"))
PLUGINS = [p for p in PACKAGES if p != CORE]
TEMPLATES = sorted(str(p.parent.relative_to(ROOT)) for p in ROOT.glob("templates/*/pyproject.toml"))


def _with_test_extra(path: str) -> str:
    text = (ROOT / path / "pyproject.toml").read_text()
    return f"{path}[test]" if "\ntest = " in text else path


def _install(session: nox.Session, *paths: str) -> None:
    session.install(TORCH)
    session.install(*(f"-e{_with_test_extra(p)}" for p in (CORE, *paths)))
    for path in paths:
        req = ROOT / path / "requirements-nodeps.txt"
        if req.exists():
            session.install("--no-deps", "-r", str(req))


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("pytest", *paths, *session.posargs, success_codes=[0, 5])


@nox.session
def tests(session: nox.Session) -> None:
    """Every package in one venv, as users install them together."""
    _install(session, *PLUGINS)
    session.install("-e", f"{CORE}[plots,wandb]", "diffusers>=0.25")
    _pytest(session)


@nox.session
def core(session: nox.Session) -> None:
    """layersync-core alone: no modality plugin installed."""
    _install(session)
    _pytest(session, CORE)


@nox.session
@nox.parametrize("package", [Path(p).name for p in PLUGINS + TEMPLATES])
def plugin(session: nox.Session, package: str) -> None:
    """Core + one plugin or template: its dependencies are its own."""
    path = next(p for p in PLUGINS + TEMPLATES if Path(p).name == package)
    _install(session, path)
    _pytest(session, path)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
