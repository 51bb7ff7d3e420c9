"""Metric maths shared by all modalities: streaming feature statistics, Frechet distance, KID
(``layersync.metrics.kid``) and cached reference statistics / features."""

from layersync.metrics.cache import cached_array, cached_stats, stats_cache_path
from layersync.metrics.frechet import frechet_distance
from layersync.metrics.stats import FeatureStats, GaussianStats

__all__ = [
    "FeatureStats",
    "GaussianStats",
    "cached_array",
    "cached_stats",
    "frechet_distance",
    "stats_cache_path",
]
