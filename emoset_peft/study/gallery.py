"""The report's picture: per emotion, the test images a method gets right with the most
confidence and its most confident mistakes, one PNG per method (``gallery_<method>.png``).

Each method is shown at its largest k. Its seeds are pooled by averaging their saved test
probabilities (``predictions_test.csv``, read by ``study/predictions.py``), so every image
appears once, with the prediction of the seeds together. The images themselves come from the
EmoSet tree named by ``data.root`` in the cell's ``config.yaml`` (only read; a relative one is
resolved where the cell was trained, as ``eval`` does). When that tree is gone (moved, another
machine), the report says so in one line and has no gallery.

The method with the highest mean test accuracy at its largest k is "the best method": its
gallery opens the report, the others close it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from emoset_peft.errors import EmoSetError
from emoset_peft.study.per_class import per_class_sort_key
from emoset_peft.study.plots import DPI
from emoset_peft.study.predictions import PREDICTIONS_FILE, load_predictions
from emoset_peft.study.result_rows import shown_path

PER_SIDE = 3  # images per emotion: this many right answers, then this many mistakes
TILE = 1.3  # inches per image tile
FIGSIZE = (2 * PER_SIDE * TILE + 0.5, 8 * TILE * 1.12 + 0.7)  # 8 emotions as rows, inches
THUMBNAIL = 192  # px: images are shrunk to this before drawing
RIGHT, WRONG = "#1a7f37", "#c0392b"


def gallery_file(method: str) -> str:
    from emoset_peft.study.report import _safe_name

    return f"gallery_{_safe_name(method)}.png"


def build_galleries(study) -> tuple[dict, dict[str, Figure]]:
    """(the summary's ``gallery`` entry, ``{file name: Figure}`` best method first).

    The entry: ``best`` (method or None), ``methods`` (per method, best first: k, seeds, mean
    accuracy, file, the image ids shown per emotion) and ``note`` (one line when some gallery
    could not be drawn, else None).
    """
    cells = _largest_cells(study)
    if not cells:
        return {"best": None, "methods": [], "note": None}, {}
    rows = [row for rows in cells.values() for row in rows]
    try:
        predictions = load_predictions(study.directory, rows)
    except EmoSetError as err:
        return {"best": None, "methods": [], "note": f"No gallery: {err}"}, {}
    entries, figures, missing = [], {}, []
    for (method, k), cell in predictions.cells.items():
        if cell.probabilities is None or (method, k) not in cells:
            continue
        entry = _choose(method, k, cell, predictions)
        found = _image_paths(study.directory, cells[(method, k)], predictions.class_names)
        if isinstance(found, str):
            missing.append((method, found))
            continue
        entry["file"] = gallery_file(method)
        entries.append((entry, found))
    entries.sort(key=lambda item: -item[0]["accuracy"])
    for entry, paths in entries:
        figures[entry["file"]] = _draw(entry, paths)
    note = None
    if missing:
        methods = ", ".join(method for method, _ in missing)
        note = f"No gallery for {methods}: {missing[0][1]}."
    summary = {
        "best": entries[0][0]["method"] if entries else None,
        "methods": [entry for entry, _ in entries],
        "note": note,
    }
    return summary, figures


def _largest_cells(study) -> dict[tuple[str, object], list[Mapping]]:
    """Each method's rows at its largest k among rows whose predictions file exists."""
    by_method: dict[str, dict] = {}
    for row in study.rows:
        run_dir = str(row.get("run_dir") or "")
        if run_dir and (study.directory / run_dir / PREDICTIONS_FILE).is_file():
            by_method.setdefault(row["method"], {}).setdefault(row["per_class"], []).append(row)
    out = {}
    for method, by_k in by_method.items():
        k = max(by_k, key=per_class_sort_key)
        out[(method, k)] = by_k[k]
    return out


def _choose(method, k, cell, predictions) -> dict:
    """Per emotion: the most confident right answers and the most confident mistakes."""
    labels, names = predictions.labels, predictions.class_names
    probs = cell.probabilities.mean(axis=0)  # [n, C]: the seeds' probabilities averaged
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(labels)), predicted]
    accuracy = float(cell.correct(labels).mean())  # the mean of the seeds' accuracies
    per_emotion = []
    for c in range(probs.shape[1]):
        shown = {"emotion": names[c]}
        for kind, keep in (("right", predicted == c), ("mistakes", predicted != c)):
            chosen = np.flatnonzero((labels == c) & keep)
            chosen = chosen[np.argsort(-confidence[chosen], kind="stable")][:PER_SIDE]
            shown[kind] = [
                {
                    "image_id": predictions.image_ids[i],
                    "predicted": names[predicted[i]],
                    "probability": float(confidence[i]),
                }
                for i in chosen
            ]
        per_emotion.append(shown)
    return {
        "method": method,
        "per_class": k,
        "seeds": len(cell.replicates),
        "accuracy": accuracy,
        "per_emotion": per_emotion,
    }


def _image_paths(study_dir: Path, rows, class_names) -> dict[str, Path] | str:
    """image_id -> file in the cell's EmoSet tree; a reason (str) when the tree is not there."""
    from emoset_peft.data.split_files import read_split_records

    run_dir = study_dir / str(rows[0]["run_dir"])  # an absolute run_dir replaces study_dir
    config_path = run_dir / "config.yaml"
    shown = shown_path(config_path, study_dir)
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        typed = str(config["data"]["root"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return f"{shown} names no data.root, so the test images cannot be found"
    root = _data_root(run_dir, typed)
    split = root / "test.json"
    where = f"the test images are not under {root} (data.root in {shown})"
    if not split.is_file():
        return f"{where}; was the tree moved? Run the report where it is"
    try:
        records = read_split_records(split, tuple(class_names))
    except EmoSetError as err:
        return f"{where}: {err}"
    return {record.image_id: root / record.image_rel for record in records}


def _data_root(run_dir: Path, typed: str) -> Path:
    """The cell's data.root as eval finds it: a relative one starts where the cell was trained
    (not where the report runs), the current folder only when the run does not record that."""
    from emoset_peft.config import load_config
    from emoset_peft.engine.rescore import training_folder

    root = Path(typed).expanduser()
    if root.is_absolute():
        return root
    try:
        folder = training_folder(run_dir, load_config(run_dir / "config.yaml"))
    except EmoSetError:
        folder = None  # a config.yaml this version cannot load: nothing tells where it ran
    return Path(os.path.abspath((folder or Path.cwd()) / root))


def _draw(entry: Mapping, paths: Mapping[str, Path]) -> Figure:
    """One row per emotion: PER_SIDE right answers, then PER_SIDE mistakes."""
    from emoset_peft.data.images import open_image

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    grid = figure.subplots(len(entry["per_emotion"]), 2 * PER_SIDE, squeeze=False)
    for c, shown in enumerate(entry["per_emotion"]):
        tiles = [(item, True) for item in shown["right"]]
        tiles += [(None, True)] * (PER_SIDE - len(shown["right"]))
        tiles += [(item, False) for item in shown["mistakes"]]
        tiles += [(None, False)] * (PER_SIDE - len(shown["mistakes"]))
        for column, (item, right) in enumerate(tiles):
            axes = grid[c, column]
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(shown["emotion"], fontsize=9)
            if item is None:
                axes.set_frame_on(False)
                empty = "no right answer" if right else "no mistake"
                axes.text(0.5, 0.5, empty, ha="center", va="center", fontsize=7, color="0.5")
                continue
            path = paths.get(item["image_id"])
            try:
                if path is None:
                    raise EmoSetError("not in test.json")
                image = open_image(path, draft_size=(THUMBNAIL, THUMBNAIL))
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                axes.imshow(np.asarray(image))
            except EmoSetError:
                axes.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=7)
            colour = RIGHT if right else WRONG
            label = "" if right else f"as {item['predicted']} "
            axes.set_title(f"{label}{item['probability']:.0%}", fontsize=7, color=colour)
            for spine in axes.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
    figure.suptitle(
        f"{entry['method']}, k = {entry['per_class']}: per true emotion (rows), the "
        f"{PER_SIDE} most confident right answers (green) and mistakes (red, predicted "
        f"emotion)\nprobabilities averaged over {entry['seeds']} seed(s); mean test accuracy "
        f"{entry['accuracy']:.1%}",
        fontsize=9,
    )
    return figure


def render_lead(summary: Mapping) -> list[str]:
    """The report's opening picture: the best method's gallery (or why there is none)."""
    gallery = summary.get("gallery") or {}
    lines = [gallery["note"], ""] if gallery.get("note") else []
    entries = gallery.get("methods") or []
    if entries:
        best = entries[0]
        lines += [
            f"## Gallery: {best['method']} (highest mean test accuracy at k = {best['per_class']})",
            "",
            f"Per emotion, the test images {best['method']} gets right with the most confidence "
            "and its most confident mistakes (with the emotion it predicted). Its lead over the "
            "next method may be within noise: the tables below say. "
            + ("The other methods' galleries close the report." if len(entries) > 1 else ""),
            "",
            f"![gallery of {best['method']}]({best['file']})",
            "",
        ]
    return lines


def render_rest(summary: Mapping) -> list[str]:
    """The galleries of the other methods, by mean test accuracy at their largest k."""
    entries = ((summary.get("gallery") or {}).get("methods") or [])[1:]
    if not entries:
        return []
    lines = ["## Galleries of the other methods", ""]
    for entry in entries:
        lines += [
            f"![gallery of {entry['method']}, k = {entry['per_class']}]({entry['file']})",
            "",
        ]
    return lines
