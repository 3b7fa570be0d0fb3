"""Typed run configuration: YAML recipe + dotted ``key=value`` overrides -> a frozen config.

A recipe is a YAML file with the sections below (``data``, ``model``, ``train``) plus top-level
run keys. Overrides on the command line use dotted paths (``train.lr=3e-4``,
``model.options.r=16``). Unknown keys are errors that name the key and the closest valid ones;
values are converted to the field's type. The resolved config is written into every run folder
(``config.yaml``) and hashed so that a resume can check it is continuing the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emoset_peft.errors import EmoSetError
from emoset_peft.metrics.registry import selection_choices
from emoset_peft.utils.io import atomic_write_text


@dataclass
class DataConfig:
    root: str = ""  # EmoSet root (the folder with train.json); required
    per_class: int | str = 16  # training images per class; "all" = the whole train split
    fraction: float | None = None  # alternative to per_class: this share of each class
    data_seed: int = 0  # picks the subset; separate from train.seed on purpose
    # Model selection on validation images: "fixed" = selection_per_class per class; "k_tied" =
    # min(k, 4) per class (CoOp's few-shot protocol; 4 for "all" or a fraction); "none" = no
    # validation: train the whole step budget and keep the last step.
    selection: str = "fixed"
    selection_per_class: int | None = 20  # "fixed": images per class from validation; None = all
    test_limit_per_class: int | None = None  # None = the whole test split (what papers report)
    skip_corrupt: bool = (
        True  # skip undecodable images (counted in metrics.json) instead of failing
    )
    skip_missing: bool = False  # skip records whose files are missing instead of failing
    cache_dir: str | None = None  # index and decoded-image caches; default ~/.cache/emoset_peft
    # threads decoding JPEGs into the cache (PIL releases the GIL); None = the CPUs this process
    # may use (os.sched_getaffinity)
    decode_workers: int | None = None
    follow_symlinks: bool = False  # follow symlinks whose target lies outside data.root
    # Train on exactly the ids of a manifest (`data subset --out`, a run's train_manifest.json,
    # or a folder of them: data/manifests.py) instead of drawing per_class / fraction.
    manifest: str | None = None
    allow_fewer: bool = False  # per_class above a class's size: take all of it (a warning)


@dataclass
class ModelConfig:
    backbone: str = "google/vit-base-patch16-224-in21k"  # Hub id or local folder
    method: str = "lora"
    options: dict[str, Any] = field(default_factory=dict)  # method options, e.g. {r: 16, alpha: 32}
    targets: list[str] | None = None  # roles: q, k, v, out, mlp_in, mlp_out; None = method default
    layers: list[int] | None = None  # restrict adapters to these layers; None = all
    quantize: str | None = None  # "8bit" | "4bit" (bitsandbytes)
    gradient_checkpointing: bool = False
    head_init: str | None = None  # "text": CLIP head from the zero-shot text embeddings
    frozen_dtype: str = "auto"  # "auto": frozen base weights in bf16 when training in bf16


@dataclass
class TrainConfig:
    lr: float = 1e-3
    head_lr: float | None = None  # None = same as lr
    weight_decay: float = 0.01
    # images per optimizer step over all processes (each takes batch_size / N), before
    # grad_accum; capped by the subset size
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: float = (
        30.0  # passes over the subset; the step budget is max(min_steps, epochs * n / batch)
    )
    min_steps: int = 60  # so that k=1 (8 images) still trains sensibly
    max_steps: int | None = None  # hard cap (or exact budget when epochs=0)
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    label_smoothing: float = 0.1
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    seed: int = 0  # training randomness (init, dropout, augmentation)
    eval_every: int | None = None  # steps (>= 1) between selection evals; None = ~10 per run
    patience: int | None = None  # stop after this many evals without improvement; None = never
    select_metric: str = "accuracy"  # validation metric used to pick the checkpoint
    checkpoint_every: int | None = None  # steps between resumable checkpoints; None = none
    keep_checkpoints: int = 2
    report_to: str = "none"  # "none" | "tensorboard" | "wandb" | comma-separated
    compile: bool = False  # torch.compile the model (the first steps are slow while it compiles)
    fast_kernels: bool = (
        True  # CPU training: matmul attention + PCG64 dropout masks (models/kernels.py)
    )
    deterministic: bool = False  # torch deterministic algorithms (for exact resume checks)
    # "auto" (or true): a method whose backbone is frozen and whose head reads the pooled feature
    # (linear, zeroshot) computes each image's feature once and trains the head on the cached
    # features, without augmentation; "off" (YAML reads a bare off as false): every step runs
    # the backbone on augmented images
    frozen_features: bool | str = "auto"


@dataclass
class RunConfig:
    output_dir: str = "runs/run"
    overwrite: bool = False  # replace an existing run folder
    resume: bool = False  # continue an existing run folder from its latest checkpoint
    cpu: bool = False  # force the CPU even when a GPU is present
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the result (not where it goes or how it resumes)."""
        content = self.to_dict()
        for key in ("output_dir", "overwrite", "resume"):
            content.pop(key)
        for (section, key), value in FINGERPRINT_NEUTRAL.items():
            if content[section].get(key) == value:  # as before the option existed
                content[section].pop(key)
        for (section, key), (value, hashed_as) in FINGERPRINT_AS_BEFORE.items():
            if content[section].get(key) == value:
                content[section][key] = hashed_as
        if _frozen_features_change_results(self):
            content["train"]["frozen_features"] = "auto"  # true and "auto" are one setting
        else:
            content["train"].pop("frozen_features")
        blob = json.dumps(content, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Options added later, at the value that does what the toolkit did before them: left out of the
# fingerprint, so that runs and study cells from earlier versions still resume and are skipped.
FINGERPRINT_NEUTRAL = {
    ("data", "selection"): "fixed",
    ("data", "follow_symlinks"): False,
    ("data", "manifest"): None,
    ("data", "allow_fewer"): False,
}
# Defaults that changed without changing results: hashed as the old default, for the same reason.
FINGERPRINT_AS_BEFORE = {
    ("data", "decode_workers"): (None, 2),  # now "the CPUs this process may use"; was 2
}


def _frozen_features_change_results(config: RunConfig) -> bool:
    """train.frozen_features is hashed only where it changes what a run computes: a method that
    trains its head on cached features (no augmentation). Every other method, zeroshot (it trains
    nothing and scores the same features) and frozen_features=off keep the hash they had before
    the option existed."""
    from emoset_peft.models import methods

    method, mode = config.model.method, config.train.frozen_features
    return methods.frozen_feature_path(method, mode) and methods.trains(method)


# -- building configs ---------------------------------------------------------------------------


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML recipe (optional), apply dotted overrides, and validate into a RunConfig."""
    raw: dict[str, Any] = dict(base or {})
    recipe = read_yaml(path) if path is not None else {}
    raw = deep_merge(raw, copy.deepcopy(recipe))  # overrides below edit raw's sections in place
    for item in overrides or []:
        apply_override(raw, item)
    if recipe and overrides:
        from emoset_peft.config_help import check_recipe_options

        check_recipe_options(recipe, overrides, raw)
    return from_dict(RunConfig, raw, where="config")


def read_yaml(path: str | Path) -> dict[str, Any]:
    from emoset_peft.utils.recipes import resolve_recipe_path

    try:
        path = resolve_recipe_path(path)  # a file, or a packaged recipe's name ("vit_lora")
    except EmoSetError:
        if Path(path).is_dir():
            raise EmoSetError(
                f"recipe {path} is a folder, not a file; pass a recipe file (a .yaml in it?) "
                "or a packaged recipe's name (emoset-peft recipes ls)"
            ) from None
        raise
    try:
        content = load_yaml_text(path.read_text(encoding="utf-8")) or {}
    except YAMLExpansionError as err:
        raise EmoSetError(
            f"recipe {path}: {err}; write the values out instead of nesting aliases"
        ) from None
    except UnicodeDecodeError as err:
        raise EmoSetError(
            f"recipe {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
            f"offset {err.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as err:
        from emoset_peft.config_help import yaml_error_line

        raise EmoSetError(f"recipe {path} is not valid YAML: {yaml_error_line(err)}") from None
    if not isinstance(content, dict):
        raise EmoSetError(f"recipe {path} must be a mapping of sections (data, model, train)")
    return content


# A recipe holds a few hundred values. Each alias (*name) stands for its anchor's whole value, so
# nested aliases multiply ("billion laughs": 9 levels of 9 aliases are 387 million values, which
# PyYAML builds as shared objects but every deepcopy, asdict or repr writes out in full).
MAX_YAML_VALUES = 100_000


class YAMLExpansionError(ValueError):
    """A YAML text whose aliases expand past MAX_YAML_VALUES values, or into themselves."""


class _BoundedLoader(yaml.SafeLoader):
    """safe_load's loader, refusing an alias expansion bomb after composing the node graph (a
    node per value written, aliases shared) and before constructing any Python object."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values in ``node`` with every alias written out, counted once per shared node."""
    if isinstance(node, yaml.ScalarNode):
        return 1
    key = id(node)
    if key in sizes:
        return sizes[key]
    where = f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"
    if key in open_nodes:
        raise YAMLExpansionError(f"the value at {where} contains an alias to itself")
    open_nodes.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else sum(node.value, ())
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_YAML_VALUES:
            raise YAMLExpansionError(
                f"the aliases in the value at {where} expand to more than "
                f"{MAX_YAML_VALUES:,} values"
            )
    open_nodes.discard(key)
    sizes[key] = total
    return total


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` that raises YAMLExpansionError for an alias expansion bomb."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)


def save_config(config: RunConfig, path: str | Path) -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write_text(path, f"# resolved config, fingerprint {config.fingerprint()}\n{text}")


def parse_value(text: str) -> Any:
    """``key=value`` values are YAML scalars/lists: 3e-4, true, null, [q, v], {r: 8}."""
    try:
        return load_yaml_text(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one dotted ``key=value`` override (``train.lr=3e-4``) in a raw config tree, in place;
    the value is parsed as YAML (:func:`parse_value`). Used by recipes and study grids."""
    if "=" not in item:
        raise EmoSetError(f"override {item!r} is not key=value (for example train.lr=3e-4)")
    dotted, text = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise EmoSetError(f"override {item!r}: {key} is not a section")
    try:
        node[keys[-1]] = parse_value(text)
    except YAMLExpansionError as err:
        raise EmoSetError(f"override {dotted.strip()}: {err}") from None


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` laid over ``a`` section by section (a new dict; ``model.options`` is replaced
    whole, since one method's options mean nothing to another)."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``raw``, checking every key and converting every value."""
    if not isinstance(raw, dict):
        raise EmoSetError(f"{where} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EmoSetError(f"unknown key {where}.{key}{hint} (valid keys: {', '.join(fields)})")
        if isinstance(value, bool) and (cls.__name__, key) in YAML_BOOLEAN_WORDS:
            value = YAML_BOOLEAN_WORDS[cls.__name__, key][value]
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


# String keys whose valid words YAML reads as booleans (`mixed_precision: no` is False): the
# word the user wrote, back.
YAML_BOOLEAN_WORDS = {("TrainConfig", "mixed_precision"): {False: "no", True: "yes"}}


def _convert(value: Any, hint: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except EmoSetError as err:
                errors.append(str(err))
        raise EmoSetError(
            errors[0]
            if len(errors) == 1
            else f"{where}={_shown(value)} fits none of {_type_name(hint)}"
        )
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]  # train.targets=q is a one-item list
        if not isinstance(value, list):
            raise EmoSetError(f"{where} must be a list, got {_shown(value)}")
        return [_convert(v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise EmoSetError(f"{where} must be a mapping, got {_shown(value)}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise EmoSetError(f"{where} must be true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise EmoSetError(f"{where} must be an integer, got {_shown(value)}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise EmoSetError(f"{where} must be a number, got {_shown(value)}")
        if not math.isfinite(number):  # YAML .nan / .inf, or lr=nan on the command line
            raise EmoSetError(f"{where}={value} must be a finite number")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise EmoSetError(f"{where} must be a string, got {_shown(value)}")
    raise EmoSetError(f"{where}: unsupported type {_type_name(hint)}")


# A wrong value is quoted in its message as far as it tells what was written: a long string or a
# big list (a whole expanded YAML tree) would bury the line that says what to do.
_SHORT_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict = 2, 4, 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60


def _shown(value: Any) -> str:
    return _SHORT_REPR.repr(value)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


CHOICES = {
    "train.mixed_precision": ("no", "bf16", "fp16", "bf16!", "fp16!"),
    "model.quantize": (None, "8bit", "4bit"),
    "model.frozen_dtype": ("auto", "float32", "bfloat16", "float16"),
    "train.select_metric": selection_choices(),  # the metric registry's names and "loss"
    "data.selection": ("fixed", "k_tied", "none"),
    "train.frozen_features": ("auto", "off", True, False),
}


def validate(config: RunConfig) -> RunConfig:
    """Checks across fields that types alone cannot express."""
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise EmoSetError(
                f"{dotted}={_shown(value)} is not one of {', '.join(map(str, allowed))}"
            )
    per_class = config.data.per_class
    if isinstance(per_class, str) and per_class != "all":
        raise EmoSetError(f"data.per_class={_shown(per_class)} must be a number of images or 'all'")
    if isinstance(per_class, int) and per_class < 0:
        raise EmoSetError(f"data.per_class={per_class} must be >= 0")
    _check_ranges(config)
    _check_trackers(config.train.report_to)
    if not config.data.root:
        raise EmoSetError("data.root is not set: pass data.root=/path/to/EmoSet-118K")
    if config.data.selection == "none" and config.train.patience is not None:
        raise EmoSetError(
            "train.patience stops on validation, but data.selection=none has no "
            "validation; remove train.patience or pick data.selection=fixed|k_tied"
        )
    if config.data.manifest is not None:
        from emoset_peft.data.manifests import check_manifest_source

        check_manifest_source(config.data)
    if config.overwrite and config.resume:
        raise EmoSetError("overwrite=true and resume=true contradict each other; pick one")
    return config


# (section.key, lowest, highest, lowest included, highest included); None = unbounded or unset.
RANGES = (
    ("train.lr", 0, None, False, None),
    ("train.head_lr", 0, None, False, None),
    ("train.weight_decay", 0, None, True, None),
    ("train.warmup_ratio", 0, 1, True, True),
    ("train.label_smoothing", 0, 1, True, False),
    ("train.max_grad_norm", 0, None, False, None),
    ("train.epochs", 0, None, True, None),
    ("train.min_steps", 0, None, True, None),
    ("train.max_steps", 1, None, True, None),
    ("train.patience", 1, None, True, None),
    ("train.batch_size", 1, None, True, None),
    ("train.eval_batch_size", 1, None, True, None),
    ("train.grad_accum", 1, None, True, None),
    ("train.eval_every", 1, None, True, None),
    ("train.checkpoint_every", 0, None, True, None),
    ("train.keep_checkpoints", 1, None, True, None),
    ("data.fraction", 0, 1, False, True),
    ("data.selection_per_class", 1, None, True, None),
    ("data.test_limit_per_class", 1, None, True, None),
    ("data.decode_workers", 1, None, True, None),
)

RANGE_HINTS = {
    "train.eval_every": (
        " steps; leave it unset (null) for about 10 selection evals per run, or set "
        "data.selection=none for none"
    ),
}


def _check_ranges(config: RunConfig) -> None:
    for dotted, low, high, low_in, high_in in RANGES:
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value is None:
            continue
        too_low = low is not None and (value < low if low_in else value <= low)
        too_high = high is not None and (value > high if high_in else value >= high)
        if too_low or too_high:
            if high is None:
                wanted = f">= {low}" if low_in else f"> {low}"
            else:
                wanted = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            raise EmoSetError(f"{dotted}={value} must be {wanted}{RANGE_HINTS.get(dotted, '')}")
    t = config.train
    if t.epochs == 0 and t.min_steps == 0 and t.max_steps is None:
        raise EmoSetError(
            "train.epochs=0 with train.min_steps=0 trains no steps: set "
            "train.max_steps=N for exactly N steps, or train.epochs > 0"
        )


def _check_trackers(report_to: str) -> None:
    from accelerate.utils import LoggerType  # accelerate's tracker names

    valid = ("none", *(kind.value for kind in LoggerType))
    for name in (part.strip() for part in report_to.split(",")):
        if name and name not in valid:
            raise EmoSetError(
                f"train.report_to={report_to}: {name!r} is not a tracker; use "
                f"{', '.join(valid)} (comma-separated for several)"
            )
