"""The method registry: each method's options (a validated dataclass) and its PEFT config.

``METHODS`` lists what ``build_model`` accepts. PEFT tuners get ``task_type=None``, explicit
``target_modules`` (from the role map) and ``modules_to_save=[head]``; ``prefix`` and ``vpt`` are
built in prompts.py; ``linear`` trains the head, ``full`` every weight, ``zeroshot`` nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from emoset_peft.errors import EmoSetError
from emoset_peft.models import zeroshot


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
    init_r: int = 12  # rank each module starts with
    alpha: float = 16.0
    dropout: float = 0.0
    tinit: int | None = None  # warm-up steps before pruning; default 10% of total_steps
    tfinal: int | None = None  # steps with the final budget; default 20% of total_steps
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
class ZeroShotOptions:
    templates: tuple[str, ...] = field(default=zeroshot.DEFAULT_TEMPLATES)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str  # "peft" | "prefix" | "vpt" | "linear" | "full" | "zeroshot"
    options: type
    roles: tuple[str, ...] = ()  # default targets of a PEFT method
    summary: str = ""


_SPECS = (
    MethodSpec("lora", "peft", LoraOptions, ("q", "v"), "low-rank updates of q and v"),
    MethodSpec("dora", "peft", LoraOptions, ("q", "v"), "LoRA with a learned magnitude per output"),
    MethodSpec(
        "ia3", "peft", NoOptions, ("k", "v", "mlp_out"), "learned scaling of k, v and the MLP input of fc2"
    ),
    MethodSpec("loha", "peft", LycorisOptions, ("q", "v"), "low-rank Hadamard product"),
    MethodSpec("lokr", "peft", LoKrOptions, ("q", "v"), "low-rank Kronecker product"),
    MethodSpec("oft", "peft", OFTOptions, ("q", "v"), "block-diagonal orthogonal rotation"),
    MethodSpec("vera", "peft", VeraOptions, ("q", "v"), "shared random low-rank matrices, learned scales"),
    MethodSpec(
        "adalora", "peft", AdaLoraOptions, ("q", "v"), "LoRA with SVD rank budget (needs total_steps)"
    ),
    MethodSpec("prefix", "prefix", PrefixOptions, (), "learned key/value prefixes in every attention layer"),
    MethodSpec("vpt", "vpt", VPTOptions, (), "visual prompt tokens (shallow or deep)"),
    MethodSpec("linear", "linear", NoOptions, (), "the head only (linear probe)"),
    MethodSpec("full", "full", NoOptions, (), "every weight (full fine-tuning baseline)"),
    MethodSpec("zeroshot", "zeroshot", ZeroShotOptions, (), "CLIP text-embedding head, no training"),
)
REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
METHODS: tuple[str, ...] = tuple(REGISTRY)
# PEFT tuners whose merge_and_unload folds the adapter into the base weights.
MERGEABLE: tuple[str, ...] = tuple(spec.name for spec in _SPECS if spec.kind == "peft")


def get_method(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise EmoSetError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    return REGISTRY[name]


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
            raise EmoSetError(f"method {spec.name!r}: option {name}={value!r} should be like {default!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            if not float(value).is_integer():
                raise EmoSetError(f"method {spec.name!r}: option {name}={value!r} should be an integer")
            setattr(options, name, int(value))  # 4.0 from a YAML file -> 4
        elif isinstance(default, float):
            setattr(options, name, float(value))
    if isinstance(options, ZeroShotOptions):
        options.templates = tuple(options.templates)
    _check_option_ranges(spec, options)
    return options


POSITIVE_OPTIONS = ("r", "init_r", "alpha", "block_size", "prefix_length", "reparam_hidden",
                    "num_prompts", "delta_t")


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


# -- PEFT configs --------------------------------------------------------------------------------
def peft_config(spec: MethodSpec, o, targets: list[str], feedforward: list[str], head: str, total_steps):
    """The method's peft config; peft's own refusals become one EmoSetError line."""
    try:
        return _peft_config(spec, o, targets, feedforward, head, total_steps)
    except (ValueError, TypeError) as err:
        if isinstance(err, EmoSetError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        names = ", ".join(f.name for f in dataclasses.fields(o)) or "none"
        raise EmoSetError(f"model.options for method {spec.name!r} rejected by peft: {reason} "
                          f"(its options: {names})") from None


def _peft_config(spec: MethodSpec, o, targets: list[str], feedforward: list[str], head: str, total_steps):
    import peft

    common = {"target_modules": targets, "modules_to_save": [head], "task_type": None}
    if spec.name in ("lora", "dora"):
        return peft.LoraConfig(
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            use_rslora=o.rslora,
            use_dora=spec.name == "dora",
            bias="none",
            **common,
        )
    if spec.name == "adalora":
        tinit = o.tinit if o.tinit is not None else total_steps // 10
        tfinal = o.tfinal if o.tfinal is not None else total_steps // 5
        if tinit >= total_steps - tfinal:
            raise EmoSetError(
                f"adalora: tinit={tinit} must be < total_steps - tfinal = {total_steps - tfinal}"
            )
        return peft.AdaLoraConfig(
            target_r=o.r,
            init_r=o.init_r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=o.delta_t,
            orth_reg_weight=o.orth_reg_weight,
            total_step=total_steps,
            **common,
        )
    if spec.name == "ia3":
        return peft.IA3Config(feedforward_modules=feedforward, **common)
    if spec.name == "loha":
        return peft.LoHaConfig(
            r=o.r, alpha=o.alpha, rank_dropout=o.rank_dropout, module_dropout=o.module_dropout, **common
        )
    if spec.name == "lokr":
        return peft.LoKrConfig(
            r=o.r,
            alpha=o.alpha,
            rank_dropout=o.rank_dropout,
            module_dropout=o.module_dropout,
            decompose_factor=o.decompose_factor,
            **common,
        )
    if spec.name == "oft":
        return peft.OFTConfig(
            r=0, oft_block_size=o.block_size, module_dropout=o.dropout, coft=o.coft, **common
        )
    if spec.name == "vera":
        return peft.VeraConfig(
            r=o.r, vera_dropout=o.dropout, d_initial=o.d_initial, save_projection=True, **common
        )
    raise AssertionError(spec.name)
