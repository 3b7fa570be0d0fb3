"""EmoSet on disk -> datasets, low-data subsets, synthetic trees and image opening."""

from emoset_peft.data.emoset import default_cache_dir, load_emoset, read_label_map
from emoset_peft.data.images import CorruptImageError, is_readable_image, open_image
from emoset_peft.data.subsets import (
    low_data_subset,
    read_manifest,
    selection_subset,
    subset_from_manifest,
    subset_manifest,
    write_manifest,
)
from emoset_peft.data.synthetic import make_synthetic_emoset

__all__ = [
    "CorruptImageError",
    "default_cache_dir",
    "is_readable_image",
    "load_emoset",
    "low_data_subset",
    "make_synthetic_emoset",
    "open_image",
    "read_label_map",
    "read_manifest",
    "selection_subset",
    "subset_from_manifest",
    "subset_manifest",
    "write_manifest",
]
