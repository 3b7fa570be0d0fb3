"""Scoring a finished run again (``emoset-peft eval``): which images, and where results may go.

The images of a split are the ones the run itself used: ``train`` its training subset,
``validation`` its selection set, ``test`` the test split (with ``data.test_limit_per_class``),
all drawn by ``data.run_data.select_splits`` from the run's config, overrides applied. Only the
split asked for is selected and decoded, so scoring the test split of another tree
(``data.root=...``) does not need that tree to hold k training images per class.

Results go to ``metrics_<split>.json`` and ``predictions_<split>.csv`` in ``RUN/eval/`` (for the
run's own data tree) or ``RUN/eval/<tree folder name>/`` (another tree), never over a file the
run wrote while training (``metrics.json``, ``predictions_test.csv``, ...).

A run is scored the way it scored its own test split (:class:`RunScoring`): under the autocast
recorded in its metrics.json (whatever the precision rule would pick on this machine), with its
frozen weights stored as training stored them (``model.frozen_dtype``: bf16-rounded weights give
other logits than fp32 ones under the same autocast) and its adapters folded in unless it trained
under ``train.compile``. Eval then gives the run's test metrics; where one differs (another
device, precision, batch size, thread count or torch), :func:`differences_line` says which, by
how much and why.

Paths in a run's config.yaml are kept as typed (its fingerprint hashes them so): a relative
``data.root`` is resolved against the folder the run was trained in (provenance.json ``cwd``; for
runs from before it was recorded, the folder that ``output_dir`` was relative to), overrides on
the eval command line against the current folder. Eval takes only the overrides it uses
(:data:`EVAL_KEYS`); any other key would change nothing, so it is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from emoset_peft.config import DataConfig, RunConfig, load_config
from emoset_peft.data.emoset import check_emoset_root
from emoset_peft.errors import EmoSetError

SPLITS = ("train", "validation", "test")
EVAL_FOLDER = "eval"  # inside the run folder; engine/run_dir.py lists it as the run's own
# Override keys eval reads besides every data.* key: the rest only change how a run trains.
EVAL_KEYS = ("model.backbone", "train.eval_batch_size", "train.mixed_precision", "cpu")
DATA_PATHS = ("root", "cache_dir", "manifest")  # data.* keys holding a file or folder


def check_eval_overrides(overrides: list[str]) -> None:
    """EmoSetError naming the overrides eval does not use (it would ignore them silently)."""
    unused = []
    for item in overrides:
        dotted = item.split("=", 1)[0].strip()
        if not (dotted == "data" or dotted.startswith("data.") or dotted in EVAL_KEYS):
            unused.append(dotted)
    if unused:
        raise EmoSetError(
            f"eval does not use {', '.join(unused)} (they change how a run trains, not how it "
            f"is scored); it takes data.*, {', '.join(EVAL_KEYS)}"
        )


def training_folder(run_dir: Path, trained: RunConfig) -> Path | None:
    """The working folder the run was trained in, where its relative paths start; None when
    the run does not tell (trained before provenance.json recorded it, and moved since)."""
    try:
        cwd = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8")).get("cwd")
    except (OSError, ValueError, AttributeError):
        cwd = None
    if isinstance(cwd, str) and cwd:
        return Path(cwd)
    typed = Path(trained.output_dir)
    here = run_dir.resolve()
    if typed.is_absolute() or ".." in typed.parts or not typed.parts:
        return None
    if here.parts[-len(typed.parts) :] != typed.parts:
        return None  # renamed or moved since
    return Path(*here.parts[: -len(typed.parts)])


def _absolute(data: DataConfig, folder: Path) -> DataConfig:
    changes = {}
    for key in DATA_PATHS:
        value = getattr(data, key)
        if value and not Path(value).expanduser().is_absolute():
            changes[key] = os.path.abspath(folder / Path(value).expanduser())  # no ../
    return dataclasses.replace(data, **changes)


def eval_configs(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, RunConfig]:
    """(the run's config, the config to score with): data paths absolute, the run's own ones
    resolved where it was trained, the overrides' ones from the current folder. EmoSetError
    when the run's data tree is not where it trained (naming it) or an override is unused."""
    check_eval_overrides(overrides)
    trained = load_config(run_dir / "config.yaml")
    typed_relative = not Path(trained.data.root).expanduser().is_absolute()
    folder = training_folder(run_dir, trained)
    recorded = _absolute(trained.data, folder or Path.cwd())
    trained = dataclasses.replace(trained, data=recorded)
    config = load_config(None, overrides, base=trained.to_dict())
    config = dataclasses.replace(config, data=_absolute(config.data, Path.cwd()))
    root = Path(config.data.root)
    if config.data.root == recorded.root and not root.is_dir():
        where = (
            f"the run was trained on {root}"
            if folder is not None or not typed_relative
            else f"the run's config.yaml gives data.root relative to the folder it was trained "
            f"in, which {run_dir} does not record; from here that is {root}"
        )
        raise EmoSetError(
            f"{where}, which is not there; pass data.root=<where that EmoSet tree is now>"
        )
    check_emoset_root(root)  # a look at the disk: before the model is loaded
    return trained, config


def is_run_folder(folder: Path) -> bool:
    """A folder ``train`` or a study cell wrote (marker, or config.yaml beside adapter/)."""
    from emoset_peft.engine.run_dir import MARKER

    return (folder / MARKER).exists() or (
        (folder / "config.yaml").is_file() and (folder / "adapter").is_dir()
    )


def refuse_training_output(path: str | os.PathLike, what: str) -> None:
    """EmoSetError when ``path`` is a file a run writes while training (in a run folder)."""
    from emoset_peft.engine.run_dir import WRITTEN

    path = Path(path)
    if path.name in WRITTEN and is_run_folder(path.parent):
        raise EmoSetError(
            f"{what} {path} is a file its run wrote while training, which eval and predict "
            "never overwrite; pick another path"
        )


def output_paths(
    run_dir: Path, split: str, data_root: str, run_root: str, out_dir: str | None = None
) -> tuple[Path, Path]:
    """(metrics_<split>.json, predictions_<split>.csv) for one eval, checked against the
    run's own files."""
    if out_dir is not None:
        folder = Path(out_dir)
    elif _same_path(data_root, run_root):
        folder = run_dir / EVAL_FOLDER
    else:
        folder = run_dir / EVAL_FOLDER / (Path(data_root).resolve().name or "data")
    paths = folder / f"metrics_{split}.json", folder / f"predictions_{split}.csv"
    for path in paths:
        refuse_training_output(path, "eval output")
    return paths


def _same_path(one: str, other: str) -> bool:
    try:
        return Path(one).resolve() == Path(other).resolve()
    except OSError:
        return one == other


def split_config(data: DataConfig, split: str) -> DataConfig:
    """``data`` reduced to what selects ``split``: the other splits' subsets are not drawn."""
    from emoset_peft.data.run_data import selection_images_per_class

    if split == "train":
        return dataclasses.replace(data, selection="none")
    if split == "test":
        return dataclasses.replace(data, per_class=0, fraction=None, selection="none")
    # The selection set as the run drew it; k_tied's size depends on k, so it is fixed here.
    per_class = selection_images_per_class(data)
    return dataclasses.replace(
        data, per_class=0, fraction=None, selection="fixed", selection_per_class=per_class
    )


def load_split(data: DataConfig, split: str, spec, run_dir: Path, *, show_progress: bool = True):
    """(DecodedImages, class names) of ``split`` as the run selected it, decoded with the
    model's ``InputSpec`` (the decode cache is shared with training)."""
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.pipeline import decode_split
    from emoset_peft.data.run_data import select_splits
    from emoset_peft.utils.cpus import default_decode_workers

    if split == "validation" and data.selection == "none":
        raise EmoSetError(
            f"{run_dir} was trained with data.selection=none: it has no selection "
            "set; evaluate --split test, or pass data.selection=fixed"
        )
    if split == "train" and data.per_class == 0 and data.fraction is None:
        raise EmoSetError(
            f"{run_dir} trained on no images (data.per_class=0); pass data.per_class=N "
            "(or all) to score training images"
        )
    emoset = load_emoset(
        data.root,
        cache_dir=data.cache_dir,
        skip_missing=data.skip_missing,
        follow_symlinks=data.follow_symlinks,
    )
    train, selection, test, _ = select_splits(split_config(data, split), emoset)
    chosen = {"train": train, "validation": selection, "test": test}[split]
    if chosen is None:  # k_tied at k = 0 selects no validation images
        raise EmoSetError(f"{run_dir} has no {split} images to score with its config")
    images = decode_split(
        chosen,
        spec.image_size,
        crop_ratio=spec.crop_ratio,
        cache_dir=data.cache_dir,
        skip_corrupt=data.skip_corrupt,
        workers=data.decode_workers or default_decode_workers(),
        desc=f"decoding {split}",
        show_progress=show_progress,
    )
    return images, list(emoset["train"].features["label"].names)


# Accuracy-like metrics agree to this much when a run is scored again the same way (the
# probabilities are then bit-identical; this leaves room for summation order only).
TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class RunScoring:
    """How a run scored its test split: what eval and predict repeat to give its numbers."""

    precision: str | None = None  # the autocast recorded ("no", "bf16", "fp16"); None: unknown
    merge_adapters: bool = True  # folded in while scoring (not under train.compile)
    frozen: Any = None  # config.model of the run: frozen_dtype and quantize
    batch_size: int | None = None  # train.eval_batch_size
    num_processes: int | None = None
    test: dict | None = None  # metrics.json's "test"
    device: str | None = None  # the kind it ran on (metrics.json's precision record)
    setup: dict = dataclasses.field(default_factory=dict)  # provenance: device, threads, torch


def run_scoring(run_dir: Path, trained: RunConfig) -> RunScoring:
    """The run's :class:`RunScoring` from its config, metrics.json and provenance.json (what a
    run without metrics.json does not record stays None)."""
    metrics = _json_object(run_dir / "metrics.json")
    provenance = _json_object(run_dir / "provenance.json")
    precision = metrics.get("mixed_precision")
    record = metrics.get("precision") if isinstance(metrics.get("precision"), dict) else {}
    return RunScoring(
        precision=str(precision) if precision in ("no", "bf16", "fp16") else None,
        merge_adapters=not trained.train.compile,
        frozen=trained.model,
        batch_size=trained.train.eval_batch_size,
        num_processes=metrics.get("num_processes"),
        test=metrics.get("test") if isinstance(metrics.get("test"), dict) else None,
        device=record.get("device"),
        setup={
            "device": provenance.get("device"),
            "torch": (provenance.get("versions") or {}).get("torch"),
        },
    )


def _json_object(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def load_for_scoring(adapter: Path, scoring: RunScoring, precision: str, backbone=None):
    """``load_adapter(adapter, backbone)`` with its frozen weights stored as the run stored
    them at ``precision``, in eval mode and with no trainable parameter.

    Loaded trainable first, so that what training kept in fp32 (adapters, head) is told apart
    from the frozen base that it cast."""
    from emoset_peft.engine.precision import store_frozen_weights
    from emoset_peft.models import load_adapter

    model = load_adapter(adapter, backbone=backbone, trainable=scoring.frozen is not None)
    if scoring.frozen is not None:
        store_frozen_weights(model, scoring.frozen, precision)
    for param in model.parameters():
        param.requires_grad = False
    return model.eval()


def warn_if_slow(precision: str, device, what: str) -> None:
    """A warning where the run's ``precision`` is not one the rule would pick here (emulated or
    slower than fp32): reproducing the run costs speed."""
    import logging

    from emoset_peft.engine.precision import choose_here

    decision = choose_here(precision, device)
    if precision != "no" and decision.resolved != precision:
        logging.getLogger(__name__).warning(
            "%s in %s as the run did, though the rule would run fp32 here (%s): slower",
            what,
            precision,
            decision.reason,
        )


def differing_metrics(new: dict, old: dict, tolerance: float = TOLERANCE) -> list[tuple]:
    """(dotted key, new, old) for every number of ``old`` that ``new`` misses by more than
    ``tolerance`` (nested per-class and slice entries included)."""
    found = []

    def walk(a, b, key):
        if isinstance(b, dict):
            for name, value in b.items():
                walk(a.get(name) if isinstance(a, dict) else None, value, f"{key}{name}.")
        elif isinstance(b, list):
            for index, value in enumerate(b):
                inner = a[index] if isinstance(a, list) and index < len(a) else None
                walk(inner, value, f"{key}{index}.")
        elif isinstance(b, (int, float)) and not isinstance(b, bool):
            ok = isinstance(a, (int, float)) and abs(float(a) - float(b)) <= tolerance
            if not ok:
                found.append((key.rstrip("."), a, b))

    walk(new, old, "")
    return found


def differences_line(
    differing: list[tuple], scoring: RunScoring, now: RunScoring, shown: int = 3
) -> str:
    """One line: which test metrics differ from the run's metrics.json, by how much, and why
    (what differs between the run's scoring and this one)."""
    headline = sorted(differing, key=lambda item: "." in item[0])  # top-level metrics first
    parts = [
        f"{key} {new:.6g} vs {old:.6g} ({new - old:+.2g})"
        if isinstance(new, (int, float))
        else f"{key} missing"
        for key, new, old in headline[:shown]
    ]
    more = f" and {len(differing) - shown} more" if len(differing) > shown else ""
    return (
        f"{len(differing)} test metric(s) differ from the run's metrics.json: "
        f"{', '.join(parts)}{more}; why: {scoring_differences(scoring, now)}"
    )


def scoring_differences(scoring: RunScoring, now: RunScoring) -> str:
    """What differs between how the run scored and how this scoring ran, in words."""
    named = {"no": "fp32"}
    reasons = []
    if scoring.precision is None:
        reasons.append("the run's metrics.json records no precision")
    elif now.precision != scoring.precision:
        reasons.append(
            f"scored in {named.get(now.precision, now.precision)}, the run in "
            f"{named.get(scoring.precision, scoring.precision)}"
        )
    if scoring.device and scoring.device != now.device:
        reasons.append(f"on {now.device}, the run on {scoring.device}")
    for key, what in (("device", "machine"), ("torch", "torch")):
        was, is_now = scoring.setup.get(key), now.setup.get(key)
        if was and is_now and was != is_now:
            reasons.append(f"{what} {is_now}, the run's {was}")
    if scoring.batch_size != now.batch_size:
        reasons.append(f"eval_batch_size {now.batch_size}, the run's {scoring.batch_size}")
    if scoring.num_processes and scoring.num_processes != now.num_processes:
        reasons.append(f"{now.num_processes} process(es), the run's {scoring.num_processes}")
    if scoring.merge_adapters != now.merge_adapters:
        reasons.append("adapters folded in one scoring and not in the other")
    if not reasons:
        return "same precision, device, batches and torch: no known cause, please report it"
    return "; ".join(reasons)
