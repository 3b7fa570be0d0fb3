"""emoset-peft: parameter-efficient fine-tuning of ViT/CLIP on EmoSet, and low-data scaling studies.

    import emoset_peft as ep
    ds = ep.load_emoset("/data/EmoSet-118K")
    sub = ep.low_data_subset(ds["train"], per_class=16, seed=0)
    model = ep.build_model("google/vit-base-patch16-224-in21k", method="lora", num_labels=8)

Heavy modules (torch, transformers, datasets) load on first use of a name that needs them, so
``import emoset_peft`` and the CLI's ``--help`` stay instant.
"""

from __future__ import annotations

import importlib

from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS, VALENCES
from emoset_peft.utils.warnings import install as _install_warning_filters

_install_warning_filters()  # before peft and bitsandbytes load: some of them warn on import

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_emoset": "emoset_peft.data.emoset",
    "low_data_subset": "emoset_peft.data.subsets",
    "selection_subset": "emoset_peft.data.subsets",
    "write_manifest": "emoset_peft.data.subsets",
    "read_manifest": "emoset_peft.data.subsets",
    "subset_from_manifest": "emoset_peft.data.subsets",
    "make_synthetic_emoset": "emoset_peft.data.synthetic",
    "METHODS": "emoset_peft.models",
    "build_model": "emoset_peft.models",
    "load_adapter": "emoset_peft.models",
    "EmoSetModel": "emoset_peft.models",
    "count_parameters": "emoset_peft.models",
    "RunConfig": "emoset_peft.config",
    "load_config": "emoset_peft.config",
    "train": "emoset_peft.engine.recipe",
    "classification_metrics": "emoset_peft.engine.metrics",
    "StudyConfig": "emoset_peft.study.grid",
    "run_study": "emoset_peft.study.runner",
    "write_report": "emoset_peft.study.report",
    "predict": "emoset_peft.deploy.predict",
}

__all__ = ["EMOTIONS", "VALENCES", "EmoSetError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emoset_peft' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
