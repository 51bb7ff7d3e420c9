"""Plugin discovery over the entry-point group ``layersync.modalities``.

Listing reads package metadata only; a plugin is imported when it is asked for, and a plugin
that fails to import is reported with its error without breaking the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layersync.plugin import Modality

GROUP = "layersync.modalities"
KNOWN_PACKAGES = {
    "image": "layersync-image",
    "audio": "layersync-audio",
    "motion": "layersync-motion",
    "video": "layersync-video",
}


class PluginError(RuntimeError):
    """A plugin is missing, broken or does not honour the contract."""


@dataclass(frozen=True)
class PluginInfo:
    """One installed plugin as its distribution's metadata declares it."""

    name: str
    distribution: str
    version: str
    target: str  # "module:attr"
    entry_point: EntryPoint


def installed() -> dict[str, PluginInfo]:
    """Installed plugins by name, without importing any of them.

    Raises PluginError if two distributions declare the same name.
    """
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            distribution=dist.metadata["Name"] if dist else "?",
            version=dist.version if dist else "?",
            target=ep.value,
            entry_point=ep,
        )
        other = found.get(ep.name)
        if other is not None and other.distribution != info.distribution:
            raise PluginError(
                f"modality {ep.name!r} is provided by two distributions: "
                f"{other.distribution} ({other.target}) and {info.distribution} ({info.target}); "
                "uninstall one"
            )
        found[ep.name] = info
    return dict(sorted(found.items()))


def install_hint(name: str) -> str:
    package = KNOWN_PACKAGES.get(name, f"a package providing the '{name}' modality")
    return f"pip install {package}" if name in KNOWN_PACKAGES else f"install {package}"


def load(name: str) -> Modality:
    """Import and check the plugin ``name``."""
    plugins = installed()
    info = plugins.get(name)
    if info is None:
        have = ", ".join(plugins) or "none"
        raise PluginError(
            f"unknown modality {name!r} (installed: {have}); to add it: {install_hint(name)}"
        )
    try:
        obj = info.entry_point.load()
    except Exception as e:  # any import-time failure of third-party code
        raise PluginError(
            f"modality {name!r} from {info.distribution} {info.version} failed to load "
            f"({info.target}): {type(e).__name__}: {e}"
        ) from e
    check(obj, info)
    return obj


def check(obj: object, info: PluginInfo) -> None:
    """Verify ``obj`` implements the contract and targets this core's API version."""
    from layersync.plugin import API_VERSION, missing_members

    where = f"modality {info.name!r} from {info.distribution} ({info.target})"
    missing = missing_members(obj)
    if missing:
        raise PluginError(f"{where} does not implement the contract: missing {', '.join(missing)}")
    version = getattr(obj, "api_version", None)
    if version != API_VERSION:
        raise PluginError(
            f"{where} targets plugin API {version}, this layersync-core speaks {API_VERSION}; "
            "upgrade the older of the two"
        )
    if obj.name != info.name:  # type: ignore[attr-defined]
        raise PluginError(f"{where} calls itself {obj.name!r}")  # type: ignore[attr-defined]


def status(name: str) -> tuple[bool, str]:
    """(ok, message) for ``layersync plugins``: loads the plugin and reports any failure."""
    try:
        plugin = load(name)
    except PluginError as e:
        return False, str(e)
    return True, plugin.description or "ok"
