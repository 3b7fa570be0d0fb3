"""Each method's options: a dataclass per method, validated before any model is built.

``make_options(spec, given)`` turns a mapping (CLI overrides, YAML, keyword arguments) into the
method's dataclass; an unknown option, a wrong type or an out-of-range size is one EmoSetError
line naming the option and the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emoset_peft.errors import EmoSetError
from emoset_peft.models import zeroshot

if TYPE_CHECKING:
    from emoset_peft.models.methods import MethodSpec


# -- method options ----------------------------------------------------------------------------
@dataclass
class NoOptions:
    pass


@dataclass
class LoraOptions:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r


@dataclass
class AdaLoraOptions:
    r: int = 8  # average rank after budget allocation (peft target_r)
    init_r: int = 12  # rank each module starts with; must be > r (the budget prunes to r)
    alpha: float = 16.0
    dropout: float = 0.0
    tinit: int | None = None  # warm-up steps before pruning; default 10% of total_steps
    tfinal: int | None = None  # steps with the final budget; default 20% of total_steps, >= 1
    delta_t: int = 1  # steps between budget allocations
    orth_reg_weight: float = 0.5


@dataclass
class LycorisOptions:  # LoHa
    r: int = 8
    alpha: float = 16.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0


@dataclass
class LoKrOptions(LycorisOptions):
    decompose_factor: int = -1


@dataclass
class OFTOptions:
    block_size: int = 32  # must divide the targeted layers' input width
    dropout: float = 0.0  # multiplicative dropout on whole blocks
    coft: bool = False  # constrained OFT


@dataclass
class VeraOptions:
    r: int = 256
    dropout: float = 0.0
    d_initial: float = 0.1


@dataclass
class PrefixOptions:
    prefix_length: int = 10  # learned key/value pairs per layer
    reparameterize: bool = False  # produce the prefixes with an MLP (prefix-tuning paper)
    reparam_hidden: int = 512
    dropout: float = 0.0


@dataclass
class VPTOptions:
    num_prompts: int = 10
    deep: bool = True  # new prompt tokens at every layer (VPT-deep) or only at the input (shallow)
    dropout: float = 0.0


@dataclass
class AdaptFormerOptions:
    bottleneck: int = 64  # width of the down-projection (AdaptFormer's "ffn_num")
    scale: float = 0.1  # the adapter branch is scaled by this before it joins the MLP output
    dropout: float = 0.0  # on the bottleneck activations


@dataclass
class ZeroShotOptions:
    templates: tuple[str, ...] = field(default=zeroshot.DEFAULT_TEMPLATES)


def make_options(spec: MethodSpec, given: dict):
    """Validate ``given`` against the method's option dataclass; EmoSetError names the valid ones."""
    valid = {f.name: f for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(given) - set(valid))
    if unknown:
        listed = ", ".join(valid) or "none"
        raise EmoSetError(
            f"method {spec.name!r} has no option(s) {', '.join(unknown)}; its options: {listed}"
        )
    options = spec.options(**given)
    for name, f in valid.items():
        value, default = getattr(options, name), f.default
        if default is None or value is None:
            continue
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ):
            raise EmoSetError(
                f"method {spec.name!r}: option {name}={value!r} should be like {default!r}"
            )
        if isinstance(default, int) and not isinstance(default, bool):
            if not float(value).is_integer():
                raise EmoSetError(
                    f"method {spec.name!r}: option {name}={value!r} should be an integer"
                )
            setattr(options, name, int(value))  # 4.0 from a YAML file -> 4
        elif isinstance(default, float):
            setattr(options, name, float(value))
    if isinstance(options, ZeroShotOptions):
        options.templates = _templates(spec, options.templates)
    _check_option_ranges(spec, options)
    if isinstance(options, AdaLoraOptions):
        _check_adalora_ranks(spec, options)
    return options


def _templates(spec: MethodSpec, templates) -> tuple[str, ...]:
    """One string is one template ("a photo of {}", not its letters)."""
    if isinstance(templates, str):
        return (templates,)
    if not isinstance(templates, (list, tuple)) or not all(isinstance(t, str) for t in templates):
        raise EmoSetError(
            f"method {spec.name!r}: option templates={templates!r} should be a string with {{}} "
            "for the class name, or a list of them"
        )
    return tuple(templates)


POSITIVE_OPTIONS = (
    "r",
    "init_r",
    "alpha",
    "block_size",
    "prefix_length",
    "reparam_hidden",
    "num_prompts",
    "delta_t",
    "bottleneck",
    "scale",
)


def _check_option_ranges(spec: MethodSpec, options) -> None:
    """Sizes must be positive and dropouts probabilities, before peft or torch sees them."""
    for name, value in vars(options).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        where = f"model.options.{name}={value}"
        if not math.isfinite(value):
            raise EmoSetError(f"{where} (method {spec.name!r}) must be a finite number")
        if name in POSITIVE_OPTIONS and value <= 0:
            raise EmoSetError(f"{where} (method {spec.name!r}) must be > 0")
        if name.endswith("dropout") and not 0 <= value < 1:
            raise EmoSetError(f"{where} (method {spec.name!r}) must be in [0, 1)")
        if name in ("tinit", "tfinal", "orth_reg_weight") and value < 0:
            raise EmoSetError(f"{where} (method {spec.name!r}) must be >= 0")


def _check_adalora_ranks(spec: MethodSpec, options: AdaLoraOptions) -> None:
    """AdaLoRA starts every module at init_r ranks and prunes to r on average: peft's
    RankAllocator asks torch.kthvalue for the (init_r - r) * modules-th smallest score, out of
    range (a raw RuntimeError at its first pruning step) unless init_r > r."""
    if options.init_r <= options.r:
        raise EmoSetError(
            f"model.options.init_r={options.init_r} must be > model.options.r={options.r} "
            f"(method {spec.name!r} prunes from init_r ranks per module to r on average): "
            "raise model.options.init_r or lower model.options.r"
        )
