"""Metric maths shared by all modalities: streaming feature statistics and Frechet distance."""

from layersync.metrics.frechet import frechet_distance
from layersync.metrics.stats import FeatureStats, GaussianStats

__all__ = ["FeatureStats", "GaussianStats", "frechet_distance"]
