"""Data layer: sources, long-tail construction, group policies, samplers, batch augmentation."""
from .dataset import DataBundle, DataInfo, build_data
from .groups import GROUP_POLICIES, Groups, make_groups
from .longtail import balanced_split, longtail_counts, longtail_indices
from .samplers import EpochSampler, sample_weights
from .sources import SOURCES, Split, SourceData

__all__ = [
    "DataBundle", "DataInfo", "build_data", "GROUP_POLICIES", "Groups", "make_groups",
    "balanced_split", "longtail_counts", "longtail_indices", "EpochSampler", "sample_weights",
    "SOURCES", "Split", "SourceData",
]
