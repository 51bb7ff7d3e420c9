"""LayerSync: self-aligning intermediate layers for diffusion and flow models.

``from layersync import LayerSync`` is all most users need; the rest of the package (engine,
registry, config, metrics) is imported lazily so ``layersync --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from layersync.loss import LayerSync, WeightSchedule, alignment_loss  # noqa: F401
    from layersync.pairs import LayerPair, parse_pairs  # noqa: F401
    from layersync.taps import FeatureTaps  # noqa: F401

_LAZY = {
    "LayerSync": "layersync.loss",
    "LayerPair": "layersync.pairs",
    "WeightSchedule": "layersync.loss",
    "alignment_loss": "layersync.loss",
    "parse_pairs": "layersync.pairs",
    "FeatureTaps": "layersync.taps",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layersync' has no attribute {name!r}")
