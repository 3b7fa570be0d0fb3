"""The protocol block of a study report: how each cell chose its model and what it trained on.

Read from the cells' own files, never from what the study recipe promised: ``metrics.json``
(``validation.num_images``, ``train_images``, ``steps``, ``best_step``, ``selection``,
``test_evaluations``), ``config.yaml`` (``data.selection_per_class`` when metrics.json has no
``selection``) and ``train_manifest.json`` (the training image ids, for the overlap between
seeds and the nesting across k). A fact no file records is said to be unknown, not guessed.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from emoset_peft.study.per_class import ALL, per_class_sort_key


def protocol(directory: Path, rows: Sequence[Mapping], run_metrics: Sequence[dict | None]) -> dict:
    """The protocol facts of a study as a JSON-ready dict (see ``render_protocol``)."""
    per_k: dict = {}
    manifests: dict[tuple, set[str]] = {}  # (k, data_seed) -> training image ids
    modes: set[str] = set()
    test_evaluations: set = set()
    frozen: set[str] = set()  # methods with cells trained on cached frozen features
    for row, metrics in zip(rows, run_metrics):
        k = row["per_class"]
        if isinstance((metrics or {}).get("frozen_features"), Mapping) and k != 0:
            frozen.add(row["method"])
        if k == 0:
            continue  # zero-shot trains nothing and selects nothing
        metrics = metrics or {}
        entry = per_k.setdefault(
            k,
            {
                "train": [],
                "validation": [],
                "steps": [],
                "best": [],
                "selection": set(),
                "cells": 0,
            },
        )
        entry["cells"] += 1
        folder = directory / str(row.get("run_dir") or "")
        train = _number(metrics.get("train_images", row.get("train_images")))
        selection = metrics.get("selection")
        validation = _number(
            selection.get("images")
            if isinstance(selection, Mapping)
            else (metrics.get("validation") or {}).get("num_images")
        )
        mode = _selection_mode(metrics, folder)
        if mode["mode"] == "none":
            validation = 0.0
        entry["train"].append(train)
        entry["validation"].append(validation)
        entry["steps"].append(_number(metrics.get("steps", row.get("steps"))))
        entry["best"].append(_number(metrics.get("best_step", row.get("best_step"))))
        entry["selection"].add(mode["text"])
        modes.add(mode["mode"])
        test_evaluations.add(metrics.get("test_evaluations"))
        if k != ALL and row.get("run_dir"):
            key = (k, row.get("data_seed") if row.get("data_seed") is not None else row.get("seed"))
            if key not in manifests:
                ids = _manifest_ids(folder)
                if ids is not None:
                    manifests[key] = ids
    table = []
    for k in sorted(per_k, key=per_class_sort_key):
        entry = per_k[k]
        train, validation = _median(entry["train"]), _median(entry["validation"])
        steps, best = np.array(entry["steps"]), np.array(entry["best"])
        finite = np.isfinite(steps) & np.isfinite(best) & (steps > 0)
        table.append(
            {
                "per_class": k,
                "cells": entry["cells"],
                "train_images": train,
                "validation_images": validation,
                "validation_per_train": validation / train
                if train and math.isfinite(validation)
                else None,
                "selection": sorted(entry["selection"]),
                "steps_min": _finite_or_none(
                    np.nanmin(steps) if np.isfinite(steps).any() else None
                ),
                "steps_max": _finite_or_none(
                    np.nanmax(steps) if np.isfinite(steps).any() else None
                ),
                "best_step_share_median": float(np.median(best[finite] / steps[finite]))
                if finite.any()
                else None,
                "best_step_share_min": float((best[finite] / steps[finite]).min())
                if finite.any()
                else None,
                "last_step_cells": int((best[finite] >= steps[finite]).sum()),
                "step_cells": int(finite.sum()),
                **_overlap(manifests, k),
            }
        )
    recorded = {value for value in test_evaluations if value is not None}
    return {
        "selection_modes": sorted(modes),
        "per_k": table,
        "nested": _nested(manifests),
        "nested_unknown": _nested_unknown(per_k, manifests),
        "seeds": _seed_design(rows),
        "test_evaluations": sorted(recorded) if recorded else None,
        "test_evaluations_unrecorded": sum(value is None for value in test_evaluations) > 0,
        "frozen_feature_methods": sorted(frozen),
    }


def _selection_mode(metrics: Mapping, folder: Path) -> dict:
    selection = metrics.get("selection")
    if isinstance(selection, Mapping) and selection.get("mode"):
        mode = str(selection["mode"])
        per_class = selection.get("images_per_class", selection.get("per_class"))
        text = mode if per_class in (None, "") else f"{mode} ({per_class} per class)"
        return {"mode": mode, "text": text}
    if isinstance(selection, str) and selection:
        return {"mode": selection, "text": selection}
    data = _config_data(folder)
    if data is None:
        return {"mode": "unknown", "text": "unknown (no selection in metrics.json, no config)"}
    mode = str(data.get("selection") or "fixed")
    per_class = data.get("selection_per_class", 20)  # config.py's default
    if mode != "fixed":
        return {"mode": mode, "text": mode}
    return {
        "mode": "fixed",
        "text": "fixed (all of validation)"
        if per_class is None
        else f"fixed ({per_class} per class)",
    }


def _config_data(folder: Path) -> Mapping | None:
    """The ``data`` section of the cell's config.yaml; None when unreadable."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    data = config.get("data") if isinstance(config, Mapping) else None
    return data if isinstance(data, Mapping) else None


def _manifest_ids(folder: Path) -> set[str] | None:
    try:
        manifest = json.loads((folder / "train_manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ids = manifest.get("image_ids") if isinstance(manifest, Mapping) else None
    return set(map(str, ids)) if isinstance(ids, list) else None


def _overlap(manifests: Mapping[tuple, set[str]], k) -> dict:
    """Mean share of training images two data seeds have in common at ``k`` (0 = disjoint)."""
    subsets = [ids for (kk, _), ids in manifests.items() if kk == k]
    pairs = list(itertools.combinations(subsets, 2))
    if not pairs:
        return {"overlap_mean": None, "overlap_max": None, "overlap_pairs": 0}
    shares = [len(a & b) / max(min(len(a), len(b)), 1) for a, b in pairs]
    return {
        "overlap_mean": float(np.mean(shares)),
        "overlap_max": float(np.max(shares)),
        "overlap_pairs": len(pairs),
    }


def _nested_unknown(per_k: Mapping, manifests: Mapping[tuple, set[str]]) -> str:
    """What the protocol block says when nesting could not be checked, and why."""
    ks = [k for k in per_k if k not in (0, ALL)]
    if len(ks) < 2:
        return f"does not apply (one k: {ks[0]})" if ks else "does not apply (no k >= 1)"
    if not manifests:
        return "unknown (no train_manifest.json)"
    return "unknown (no data seed has a train_manifest.json at two k)"


def _nested(manifests: Mapping[tuple, set[str]]) -> bool | None:
    """Whether each data seed's subset at k lies inside its subset at every larger k."""
    seeds = {seed for _, seed in manifests}
    checked = False
    for seed in seeds:
        ks = sorted(k for k, s in manifests if s == seed)
        for small, large in itertools.pairwise(ks):
            checked = True
            if not manifests[(small, seed)] <= manifests[(large, seed)]:
                return False
    return True if checked else None


def _seed_design(rows: Sequence[Mapping]) -> dict:
    trained = [r for r in rows if r["per_class"] != 0]
    data_seeds = sorted(
        {r.get("data_seed") if r.get("data_seed") is not None else r.get("seed") for r in trained},
        key=str,
    )
    train_seeds = sorted(
        {
            r.get("train_seed") if r.get("train_seed") is not None else r.get("seed")
            for r in trained
        },
        key=str,
    )
    pairs = {(r.get("data_seed"), r.get("train_seed")) for r in trained}
    equal = all(r.get("data_seed") in (None, r.get("train_seed")) for r in trained)
    crossed = (
        len(data_seeds) >= 2
        and len(train_seeds) >= 2
        and len(pairs) == len(data_seeds) * len(train_seeds)
    )
    return {
        "data_seeds": data_seeds,
        "train_seeds": train_seeds,
        "crossed": crossed,
        "data_equals_train": equal,
    }


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# Rendering


def render_protocol(block: Mapping, table) -> list[str]:
    """Markdown lines of the protocol block; ``table(header, rows)`` renders a table."""
    lines = ["## Protocol", ""]
    seeds = block["seeds"]
    if seeds["crossed"]:
        design = (
            f"crossed: {len(seeds['data_seeds'])} data seeds (which training images) x "
            f"{len(seeds['train_seeds'])} training seeds (initialisation, order), so their "
            "variances can be told apart"
        )
    elif seeds["data_equals_train"]:
        design = (
            f"not crossed: each of the {len(seeds['data_seeds'])} seed(s) picks the "
            "training images and seeds training, so data-sampling and training variance "
            "are confounded"
        )
    else:
        design = (
            f"not crossed: {len(seeds['data_seeds'])} data seed(s), "
            f"{len(seeds['train_seeds'])} training seed(s), not all combinations"
        )
    lines.append(f"- Seeds: {design}.")
    nested = block["nested"]
    lines.append(
        "- Training subsets nested across k (each seed's k images lie inside its "
        f"larger-k images): "
        f"{_yes_no(nested, block.get('nested_unknown') or 'unknown (no train_manifest.json)')}."
    )
    evaluations = block["test_evaluations"]
    if evaluations is None:
        lines.append(
            "- Test evaluations per cell: not recorded in metrics.json; the training "
            "loop scores the test split once, after model selection."
        )
    else:
        shown = ", ".join(map(str, evaluations))
        warning = (
            ""
            if evaluations == [1]
            else " (**should be 1**: the test set was used more "
            "than once, so the test numbers are optimistic)"
        )
        unrecorded = "; some cells do not record it" if block["test_evaluations_unrecorded"] else ""
        lines.append(f"- Test evaluations per cell: {shown}{warning}{unrecorded}.")
    frozen = block.get("frozen_feature_methods") or []
    if frozen:
        lines.append(
            f"- Trained on cached frozen features: {', '.join(frozen)}. The backbone ran once "
            "per image on the eval view (resize + centre crop, eval mode) and the head trained "
            "on those features, so these cells train **without augmentation**; the other "
            "methods train on RandomResizedCrop + horizontal flip "
            "(`train.frozen_features=off` trains them on augmented images too)."
        )
    lines.append("")
    rows = []
    for entry in block["per_k"]:
        ratio = entry["validation_per_train"]
        ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
        steps = _range(entry["steps_min"], entry["steps_max"])
        if entry["step_cells"]:
            selected = (
                f"median {entry['best_step_share_median']:.0%} of budget (min "
                f"{entry['best_step_share_min']:.0%}); last step in "
                f"{entry['last_step_cells']}/{entry['step_cells']}"
            )
        else:
            selected = "not recorded"
        if entry["overlap_pairs"]:
            overlap = (
                f"{entry['overlap_mean']:.0%} mean, {entry['overlap_max']:.0%} max "
                f"({entry['overlap_pairs']} pair(s))"
            )
        else:
            overlap = "n/a (one seed or no train_manifest.json)"
        rows.append(
            [
                entry["per_class"],
                entry["cells"],
                _count(entry["train_images"]),
                _count(entry["validation_images"]),
                ratio_text,
                "; ".join(entry["selection"]),
                steps,
                selected,
                overlap,
            ]
        )
    if rows:
        lines += table(
            [
                "k",
                "cells",
                "train images",
                "validation images",
                "validation / train",
                "selection",
                "step budget",
                "selected step",
                "training-image overlap between seeds",
            ],
            rows,
        )
    return lines


def _yes_no(value, unknown: str) -> str:
    return unknown if value is None else ("yes" if value else "**no**")


def _count(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.0f}"


def _range(low, high) -> str:
    if low is None:
        return "n/a"
    return f"{low:.0f}" if low == high else f"{low:.0f}-{high:.0f}"
