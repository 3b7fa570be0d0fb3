"""Models: pretrained ViT/CLIP encoders + a linear head + one fine-tuning method.

``build_model(backbone, method, num_labels=8, **options)`` builds, ``load_adapter(folder)`` reloads
any saved method; ``METHODS`` lists the methods. The trainer's helpers (``count_parameters``,
``extra_loss``, ``after_optimizer_step``, ``input_spec``) accept DDP/accelerate-wrapped models.

Names are imported on first use (PEP 562), so ``import emoset_peft.models`` does not pull in
torch, transformers and peft until a model is actually built.
"""

import importlib

_EXPORTS = {
    "METHODS": "methods",
    "MERGEABLE": "methods",
    "build_model": "adapters",
    "build_model_from_config": "adapters",
    "check_build": "adapters",
    "load_adapter": "adapters",
    "plain_peft_snippet": "wrapper",
    "EmoSetCLIPForImageClassification": "clip_classifier",
    "FAMILIES": "families",
    "InputSpec": "families",
    "input_spec_for": "backbones",
    "QUANTIZABLE_METHODS": "quant",
    "ROLES": "roles",
    "SUPPORTED_MODEL_TYPES": "families",
    "resolve_targets": "roles",
    "save_tiny_backbone": "tiny",
    "EmoSetModel": "wrapper",
    "FastDropout": "kernels",
    "enable_fast_kernels": "kernels",
    "merged_for_inference": "merging",
    "after_optimizer_step": "wrapper",
    "count_parameters": "wrapper",
    "extra_loss": "wrapper",
    "input_spec": "wrapper",
    "unwrap": "wrapper",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
