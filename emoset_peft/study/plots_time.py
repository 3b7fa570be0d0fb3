"""The report's "Where the time goes": each cell's wall seconds split into its parts, one stacked bar per
method x k (mean over seeds), and the report paragraph that names the largest part.

The parts are the results.csv time columns (study/result_rows.py ``TIME_PARTS``): decoding the
images, computing frozen features, training steps, selection evaluations, the test evaluation;
"other" is the rest of ``cell_seconds`` (building the model, writing the run folder). A results.csv
written before these columns existed has only ``train_seconds`` (then including the selection
evaluations) and ``eval_seconds`` (read as ``test_eval_seconds``): its missing parts count as 0
and the paragraph says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from emoset_peft.study.per_class import per_class_sort_key
from emoset_peft.study.result_rows import TIME_COLUMNS

TIME_FIGURE = "time_breakdown.png"
PART_LABELS = {
    "decode_seconds": "decode",
    "feature_seconds": "frozen features",
    "train_seconds": "train steps",
    "selection_eval_seconds": "selection eval",
    "test_eval_seconds": "test eval",
    "other": "other (model build, files)",
}
PART_COLOURS = {
    "decode_seconds": "#8c564b",
    "feature_seconds": "#9467bd",
    "train_seconds": "#1f77b4",
    "selection_eval_seconds": "#ff7f0e",
    "test_eval_seconds": "#2ca02c",
    "other": "#c7c7c7",
}


def _seconds(row: Mapping, column: str) -> float | None:
    value = row.get(column)
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def time_breakdown(rows: Sequence[Mapping]) -> tuple[list[dict], list[str]]:
    """([{method, per_class, seeds, <part>: mean seconds}], parts no row recorded).

    One entry per method x k in the rows' method order and increasing k; a part a row lacks
    counts as 0 in its mean. Empty when no row has any time column."""
    present = [c for c in TIME_COLUMNS if any(_seconds(r, c) is not None for r in rows)]
    if not present:
        return [], list(TIME_COLUMNS)
    cells: dict[tuple, list[Mapping]] = {}
    for row in rows:
        cells.setdefault((row["method"], row["per_class"]), []).append(row)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    order = sorted(cells, key=lambda key: (methods.index(key[0]), per_class_sort_key(key[1])))
    entries = []
    for method, k in order:
        cell = cells[(method, k)]
        entry = {"method": method, "per_class": k, "seeds": len(cell)}
        for column in TIME_COLUMNS:
            entry[column] = sum(_seconds(r, column) or 0.0 for r in cell) / len(cell)
        totals = [_seconds(r, "cell_seconds") for r in cell]
        parts = sum(entry[c] for c in TIME_COLUMNS)
        if all(t is not None for t in totals):
            entry["other"] = max(0.0, sum(totals) / len(cell) - parts)
        else:
            entry["other"] = 0.0
        entries.append(entry)
    return entries, [c for c in TIME_COLUMNS if c not in present]


def plot_time_breakdown(entries: Sequence[Mapping], *, title: str) -> Figure:
    """Horizontal stacked bars: one per method x k, segments in ``PART_LABELS`` order."""
    parts = list(PART_LABELS)
    height = 2.2 + 0.32 * len(entries)
    figure = Figure(figsize=(7.2, height), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    labels = [f"{e['method']} k={e['per_class']}" for e in entries]
    positions = list(range(len(entries)))[::-1]  # first entry on top
    left = [0.0] * len(entries)
    for part in parts:
        widths = [e.get(part, 0.0) for e in entries]
        if not any(widths):
            continue
        axes.barh(
            positions,
            widths,
            left=left,
            color=PART_COLOURS[part],
            label=PART_LABELS[part],
            height=0.7,
        )
        left = [a + b for a, b in zip(left, widths)]
    axes.set_yticks(positions, labels)
    axes.set_xlabel("wall seconds per cell (mean over seeds)")
    axes.set_title(title)
    figure.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    axes.grid(axis="x", alpha=0.3)
    return figure


def time_figures(rows: Sequence[Mapping]) -> dict[str, Figure]:
    """``{TIME_FIGURE: figure}``, or nothing when no row recorded its time."""
    entries, _ = time_breakdown(rows)
    if not entries:
        return {}
    title = "Where the time goes: seconds per cell by part"
    return {TIME_FIGURE: plot_time_breakdown(entries, title=title)}


def render_time(rows: Sequence[Mapping], figure_names: Sequence[str]) -> list[str]:
    """The report's "Where the time goes" section: which part dominates, over all cells."""
    entries, missing = time_breakdown(rows)
    if not entries:
        return []
    totals = {part: 0.0 for part in PART_LABELS}
    for entry in entries:
        for part in totals:
            totals[part] += entry.get(part, 0.0) * entry["seeds"]
    whole = sum(totals.values())
    if whole <= 0:
        return []
    ranked = sorted(totals, key=totals.get, reverse=True)
    shares = ", ".join(f"{PART_LABELS[p]} {totals[p] / whole:.0%}" for p in ranked if totals[p] > 0)
    top = ranked[0]
    lines = [
        "## Where the time goes",
        "",
        f"Over all {sum(e['seeds'] for e in entries)} finished cells ({whole:,.0f} s), "
        f"**{PART_LABELS[top]}** takes the most time: {shares}. {_advice(top)}",
        "",
    ]
    if missing:
        names = ", ".join(PART_LABELS[c] for c in missing)
        lines += [
            f"Not recorded by these rows (results.csv from an older version): {names}; "
            "its train steps then include the selection evaluations.",
            "",
        ]
    if TIME_FIGURE in figure_names:
        lines += [f"![where the time goes]({TIME_FIGURE})", ""]
    return lines


def _advice(part: str) -> str:
    return {
        "decode_seconds": "Decoding is paid once per image: a second run of the same study "
        "reads the decode cache.",
        "feature_seconds": "Frozen features are computed once per split and reused by "
        "every later cell and seed.",
        "train_seconds": "Fewer steps (train.epochs, train.max_steps) or a smaller "
        "backbone cut it.",
        "selection_eval_seconds": "Fewer selection evaluations (train.eval_every) or a smaller "
        "selection set (data.selection_per_class, data.selection=k_tied) cut it.",
        "test_eval_seconds": "Every cell scores the whole test split once; "
        "data.test_limit_per_class cuts it for pilot runs (not for reported numbers).",
        "other": "Building the model and writing the run folder dominate: the cells are tiny.",
    }[part]
