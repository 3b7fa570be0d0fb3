"""The method registry: one entry per fine-tuning method, carrying everything that differs per method.

Like peft's tuner classes or timm's ``@register_model``: each entry is an instance of a small class
per kind (models/kinds.py; the PEFT tuners in models/peft_methods.py) that holds the options
dataclass (options.py), how the method attaches, what trains, what it saves and how it loads, whether
it folds into the weights, its per-step hooks and extra loss, its quantization modes and whether it
trains at all. The rest of the toolkit asks the entry; no method name or kind is compared elsewhere.

Adding a method: an options dataclass in options.py, a spec (an existing kind, or a subclass of
``kinds.MethodSpec`` overriding ``attach`` and what differs), one line in ``_SPECS``;
tests/test_models_methods.py then trains, saves, reloads and merges it on every tiny backbone family.
"""

from __future__ import annotations

from emoset_peft.errors import EmoSetError
from emoset_peft.models import options as opts
from emoset_peft.models.kinds import (
    AdaptFormerSpec,
    BitFitSpec,
    FullSpec,
    LinearSpec,
    MethodSpec,
    PrefixSpec,
    PromptSpec,
    ZeroShotSpec,
)
from emoset_peft.models.options import make_options  # noqa: F401 (public name)
from emoset_peft.models.peft_methods import PEFT_SPECS

# -- the registry --------------------------------------------------------------------------------
_SPECS: tuple[MethodSpec, ...] = (
    *PEFT_SPECS,
    PrefixSpec("prefix", opts.PrefixOptions, "learned key/value prefixes in every attention layer"),
    PromptSpec("vpt", opts.VPTOptions, "visual prompt tokens (shallow or deep)"),
    AdaptFormerSpec(
        "adaptformer", opts.AdaptFormerOptions, "scaled bottleneck adapter parallel to every MLP"
    ),
    BitFitSpec("bitfit", opts.NoOptions, "every bias term and the head"),
    LinearSpec("linear", opts.NoOptions, "the head only (linear probe)"),
    FullSpec("full", opts.NoOptions, "every weight (full fine-tuning baseline)"),
    ZeroShotSpec("zeroshot", opts.ZeroShotOptions, "CLIP text-embedding head, no training"),
)
REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
METHODS: tuple[str, ...] = tuple(REGISTRY)
# Methods whose adapter layers fold into the base weights (merged_for_inference, merge_and_unload).
MERGEABLE: tuple[str, ...] = tuple(spec.name for spec in _SPECS if spec.folds)
# method -> bitsandbytes modes it trains on (checked on the CPU).
QUANTIZABLE: dict[str, tuple[str, ...]] = {
    spec.name: spec.quantize for spec in _SPECS if spec.quantize
}


def get_method(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise EmoSetError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    return REGISTRY[name]


def trains(name: str) -> bool:
    """Whether ``name`` trains (False for zeroshot); an unknown name is left to validation."""
    spec = REGISTRY.get(name)
    return spec is None or spec.trains


def named(keep) -> tuple[str, ...]:
    """The methods whose spec ``keep(spec)`` accepts (for messages: "applies to lora, dora, ...")."""
    return tuple(spec.name for spec in _SPECS if keep(spec))


def frozen_feature_path(name: str, mode: str) -> bool:
    """Whether a run of ``name`` with ``train.frozen_features=mode`` computes each image's pooled
    feature once and trains / evaluates the head on the cached features (engine/features.py)."""
    spec = REGISTRY.get(name)
    return spec is not None and spec.head_on_pooled_feature and mode in ("auto", True)
