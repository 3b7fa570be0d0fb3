"""Figures of a scaling study. Each function returns a matplotlib ``Figure``; the caller saves it.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``, rendered by the
Agg canvas) rather than pyplot: no global state, no GUI backend, nothing to close by hand, so
the report works on headless machines and inside notebooks alike.

One colour per method, the same in every figure (``method_colours``). Accuracies are fractions
in 0..1 and shown as percentages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, PercentFormatter

from emoset_peft.study.per_class import ALL, per_class_sort_key

DPI = 150
# The zero-shot (k = 0) and full-data ("all") points sit this far (in log2 units) left and right
# of the measured k range, since log2(0) is undefined and "all" has no fixed k.
OFF_AXIS_GAP = 1.3


def method_colours(methods: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per method (tab10, tab20 beyond 10 methods), in the given order."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(index % palette.N) for index, method in enumerate(methods)}


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _error_bar(entry: Mapping) -> list[list[float]] | None:
    """Asymmetric error bar [[below], [above]] from a summary's CI; None when undefined."""
    if not (_finite(entry["ci_low"]) and _finite(entry["ci_high"])):
        return None
    return [
        [max(entry["mean"] - entry["ci_low"], 0.0)],
        [max(entry["ci_high"] - entry["mean"], 0.0)],
    ]


def _k_axis(ks: Sequence) -> tuple[dict, list[float], list[str], tuple[float, float]]:
    """x position of every k (log2 k; zero-shot and "all" off the measured range), the ticks,
    their labels and the axis breaks."""
    int_ks = sorted(k for k in set(ks) if k not in (0, ALL))
    low = math.log2(int_ks[0]) if int_ks else 0.0
    high = math.log2(int_ks[-1]) if int_ks else 0.0
    position = {k: math.log2(k) for k in int_ks}
    ticks, labels = [position[k] for k in int_ks], [str(k) for k in int_ks]
    breaks = (math.nan, math.nan)
    if 0 in ks:
        position[0] = low - OFF_AXIS_GAP
        ticks.insert(0, position[0])
        labels.insert(0, "0\n(zero-shot)")
        breaks = (low - OFF_AXIS_GAP / 2, breaks[1])
    if ALL in ks:
        position[ALL] = high + OFF_AXIS_GAP
        ticks.append(position[ALL])
        labels.append("all\n(full split)")
        breaks = (breaks[0], high + OFF_AXIS_GAP / 2)
    return position, ticks, labels, breaks


def _sorted_k(entries: Sequence[Mapping]) -> list[Mapping]:
    """Ascending k, "all" last."""
    return sorted(entries, key=lambda e: per_class_sort_key(e["per_class"]))


def plot_learning_curve(
    cells: Sequence[Mapping],
    replicates: Sequence[Mapping],
    paired: Sequence[Mapping],
    colours: Mapping[str, tuple],
    *,
    metric: str,
    metric_label: str,
    baseline: str,
    title: str,
    chance: float | None = None,
    majority: float | None = None,
) -> Figure:
    """Top: ``metric`` vs k per method -- a thin line per replicate (its subsets are nested
    over k, so a seed's curve is one unit), the mean, and the two-level bootstrap 95% band;
    chance, majority-class and zero-shot as horizontal references. Bottom: paired difference
    vs ``baseline`` per k with its 95% interval and a zero line.

    ``cells``/``replicates``/``paired`` are the summary's lists (``study/summary.py``).
    """
    cells = [e for e in cells if e["metric"] == metric]
    paired = [e for e in paired if e["metric"] == metric]
    figure = Figure(figsize=(10, 8.2 if paired else 5.2), dpi=DPI, layout="constrained")
    if paired:
        top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[1.6, 1])
    else:
        top, bottom = figure.add_subplot(), None
    position, ticks, labels, breaks = _k_axis([e["per_class"] for e in cells])
    methods = list(dict.fromkeys(e["method"] for e in cells))
    # Off-axis markers (k = 0, all) of different methods are spread a little so that their
    # error bars do not hide each other.
    dodge = {
        m: (i - (len(methods) - 1) / 2) * min(0.12, 0.6 / len(methods))
        for i, m in enumerate(methods)
    }
    handles = []
    for method in methods:
        colour = colours[method]
        entries = _sorted_k([e for e in cells if e["method"] == method])
        curve = [e for e in entries if e["per_class"] not in (0, ALL)]
        by_key: dict = {}
        for rep in replicates:
            if (
                rep["method"] == method
                and rep["per_class"] not in (0, ALL)
                and _finite(rep.get(metric))
            ):
                by_key.setdefault((rep["data_seed"], rep["train_seed"]), []).append(rep)
        for reps in by_key.values():
            reps = _sorted_k(reps)
            top.plot(
                [position[r["per_class"]] for r in reps],
                [r[metric] for r in reps],
                color=colour,
                lw=0.7,
                alpha=0.45,
            )
        if curve:
            x = [position[e["per_class"]] for e in curve]
            top.plot(x, [e["mean"] for e in curve], "o-", color=colour, lw=2.2, ms=5)
            with_band = [e for e in curve if _finite(e["ci_low"])]
            if with_band:
                top.fill_between(
                    [position[e["per_class"]] for e in with_band],
                    [e["ci_low"] for e in with_band],
                    [e["ci_high"] for e in with_band],
                    color=colour,
                    alpha=0.16,
                    lw=0,
                )
        for entry in entries:
            if entry["per_class"] == 0:
                top.axhline(entry["mean"], color=colour, ls=":", lw=1.3)
                top.errorbar(
                    [position[0] + dodge[method]],
                    [entry["mean"]],
                    yerr=_error_bar(entry),
                    fmt="D",
                    color=colour,
                    ms=6,
                    capsize=3,
                )
            elif entry["per_class"] == ALL:
                top.errorbar(
                    [position[ALL] + dodge[method]],
                    [entry["mean"]],
                    yerr=_error_bar(entry),
                    fmt="s",
                    color=colour,
                    ms=6,
                    capsize=3,
                )
        handles.append(Line2D([], [], color=colour, marker="o", lw=2.2, label=method))
    handles.append(Line2D([], [], color="0.3", lw=0.7, alpha=0.6, label="one seed (thin)"))
    handles.append(Patch(color="0.5", alpha=0.3, label="95% interval (seeds x test images)"))
    if any(e["per_class"] == 0 for e in cells):
        handles.append(Line2D([], [], color="0.3", marker="D", ls=":", label="zero-shot (k = 0)"))
    if chance is not None:
        top.axhline(chance, color="0.35", ls="--", lw=1)
        handles.append(Line2D([], [], color="0.35", ls="--", label=f"chance ({chance:.1%})"))
    if majority is not None and (chance is None or abs(majority - chance) > 1e-3):
        top.axhline(majority, color="0.35", ls="-.", lw=1)
        handles.append(
            Line2D([], [], color="0.35", ls="-.", label=f"majority class ({majority:.1%})")
        )
    elif majority is not None:
        handles[-1].set_label(f"chance = majority class ({chance:.1%})")
    top.set_ylim(0, 1)
    top.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    top.set_ylabel(f"{metric_label} (%)")
    top.set_title(title)
    top.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes_list = [top]
    if bottom is not None:
        _plot_differences(bottom, paired, colours, position, baseline, metric_label)
        axes_list.append(bottom)
    for axes in axes_list:
        for x in breaks:
            if math.isfinite(x):
                axes.axvline(x, color="0.8", lw=1)
        axes.grid(True, alpha=0.3)
        axes.set_xticks(ticks, labels)
        axes.set_xlim(min(ticks, default=0) - 0.5, max(ticks, default=0) + 0.5)
    axes_list[-1].set_xlabel("training images per class, k (log2 scale)")
    return figure


def _plot_differences(axes, paired, colours, position, baseline, metric_label) -> None:
    methods = list(dict.fromkeys(e["method"] for e in paired))
    dodge = {
        m: (i - (len(methods) - 1) / 2) * min(0.1, 0.5 / max(len(methods), 1))
        for i, m in enumerate(methods)
    }
    for method in methods:
        entries = _sorted_k(
            [
                e
                for e in paired
                if e["method"] == method and e["per_class"] in position and _finite(e["diff"])
            ]
        )
        # The curve over measured k is one line; k = 0 and "all" sit past the axis breaks.
        for part, fmt in (
            ([e for e in entries if e["per_class"] not in (0, ALL)], "o-"),
            ([e for e in entries if e["per_class"] in (0, ALL)], "s"),
        ):
            if not part:
                continue
            x = [position[e["per_class"]] + dodge[method] for e in part]
            below = [max(e["diff"] - e["ci_low"], 0.0) if _finite(e["ci_low"]) else 0 for e in part]
            above = [
                max(e["ci_high"] - e["diff"], 0.0) if _finite(e["ci_high"]) else 0 for e in part
            ]
            axes.errorbar(
                x,
                [e["diff"] for e in part],
                yerr=[below, above],
                fmt=fmt,
                color=colours[method],
                capsize=3,
                ms=5,
                lw=1.2,
                label=method if fmt == "o-" or len(part) == len(entries) else None,
            )
    axes.axhline(0, color="0.2", lw=1)
    axes.yaxis.set_major_formatter(
        FuncFormatter(lambda value, _: f"{100 * value:+.0f}" if abs(value) > 1e-12 else "0")
    )
    axes.set_ylabel(f"difference vs {baseline} (pp)")
    axes.set_title(
        f"Paired difference in {metric_label} vs {baseline} (same images, same "
        "seeds), 95% interval",
        fontsize=10,
    )
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_reliability(
    bins_by_cell: Sequence[Mapping], colours: Mapping[str, tuple], *, title: str
) -> Figure:
    """Reliability diagram: accuracy vs mean confidence per confidence bin (seeds pooled), one
    line per cell, with the diagonal of perfect calibration. Point area ~ images in the bin."""
    figure = Figure(figsize=(6.4, 5.6), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1, label="perfect calibration")
    for entry in bins_by_cell:
        bins = [b for b in entry["bins"] if b["count"] > 0]
        if not bins:
            continue
        total = sum(b["count"] for b in bins)
        colour = colours[entry["method"]]
        axes.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "-",
            color=colour,
            lw=1.5,
            label=f"{entry['method']} k = {entry['per_class']} (ECE {entry['ece']:.1%})",
        )
        axes.scatter(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            s=[8 + 400 * b["count"] / total for b in bins],
            color=colour,
            alpha=0.7,
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.set_xlabel("confidence (largest class probability)")
    axes.set_ylabel("accuracy of the images in the bin")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    return figure


def plot_metric_vs_params(
    points: Sequence[Mapping],
    colours: Mapping[str, tuple],
    *,
    title: str,
    metric_label: str = "test accuracy",
) -> Figure:
    """Metric vs trainable parameters (log x), one point per method with its 95% interval.

    ``points``: dicts ``{method, params, total_params, mean, ci_low, ci_high}``. Methods with no
    trainable parameters (zero-shot) cannot sit on a log axis and are dotted horizontal lines.
    """
    figure = Figure(figsize=(8, 5), dpi=DPI)
    axes = figure.add_subplot()
    axes.set_xscale("log")
    for point in points:
        colour = colours[point["method"]]
        if not (_finite(point["params"]) and point["params"] > 0):
            axes.axhline(
                point["mean"],
                color=colour,
                ls=":",
                lw=1.5,
                label=f"{point['method']} (k = 0, nothing trained)",
            )
            continue
        axes.errorbar(
            [point["params"]],
            [point["mean"]],
            yerr=_error_bar(point),
            fmt="o",
            color=colour,
            ms=8,
            capsize=4,
            label=point["method"],
        )
        share = ""
        if _finite(point.get("total_params")) and point["total_params"] > 0:
            share = f"\n{point['params'] / point['total_params']:.2%} of weights"
        axes.annotate(
            f"{point['method']}{share}",
            (point["params"], point["mean"]),
            xytext=(7, 4),
            textcoords="offset points",
            fontsize=8,
            color=colour,
        )
    counts = {
        point["params"] for point in points if _finite(point["params"]) and point["params"] > 0
    }
    if len(counts) == 1:  # one parameter count: margins of a zero-width log range are undefined
        (count,) = counts
        axes.set_autoscalex_on(False)
        axes.set_xbound(count / 4, count * 4)
        axes.margins(y=0.15)
    else:
        axes.margins(x=0.25, y=0.15)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.set_xlabel("trainable parameters (count, log scale)")
    axes.set_ylabel(f"{metric_label} (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if points:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], *, title: str) -> Figure:
    """Row-normalised confusion matrix (rows = true emotion) with each cell's share printed."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    figure = Figure(figsize=(6.8, 5.8), dpi=DPI)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=40, ha="right")
    axes.set_yticks(ticks, class_names)
    for row in ticks:
        for column in ticks:
            axes.text(
                column,
                row,
                f"{shares[row, column]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shares[row, column] > 0.55 else "black",
            )
    axes.set_xlabel("predicted emotion")
    axes.set_ylabel("true emotion")
    axes.set_title(title, fontsize=10)
    colourbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colourbar.set_label("share of the true class's test images")
    colourbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    figure.tight_layout()
    return figure


MAX_SCENES = 5
# Panel titles of the attribute-slice figure, in display order.
SLICE_TITLES = {
    "facial_expression": "facial expression",
    "human_action": "human action",
    "brightness": "brightness (low <0.4, high >=0.7)",
    "scene": "scene (most frequent)",
}


def plot_slices(
    slices: Mapping[str, Mapping[str, Mapping[str, Mapping]]],
    colours: Mapping[str, tuple],
    *,
    title: str,
) -> Figure:
    """Grouped bars of accuracy per attribute slice, one panel per attribute.

    ``slices`` maps method -> attribute -> slice -> ``{n, accuracy}`` (n = test images per run,
    printed under each slice), with ``ci_low``/``ci_high`` (the Wilson interval) drawn as error
    bars when given. A slice a method lacks is simply not drawn for it.
    """
    methods = list(slices)
    attributes = [a for a in SLICE_TITLES if any(a in s for s in slices.values())]
    attributes += [a for s in slices.values() for a in s if a not in attributes]
    attributes = list(dict.fromkeys(attributes))
    names = {
        a: list(dict.fromkeys(n for s in slices.values() for n in s.get(a, {}))) for a in attributes
    }
    if len(names.get("scene", [])) > MAX_SCENES:
        # Methods may disagree on their top scenes (different test subsets): show the scenes
        # with the most images over all methods.
        total = {
            n: sum(s.get("scene", {}).get(n, {}).get("n", 0) for s in slices.values())
            for n in names["scene"]
        }
        names["scene"] = sorted(names["scene"], key=lambda n: -total[n])[:MAX_SCENES]
    widths = [max(len(names[a]), 2) for a in attributes]
    figure = Figure(
        figsize=(max(8.0, 0.95 * sum(widths) + 2.5), 4.8), dpi=DPI, layout="constrained"
    )
    panels = figure.subplots(
        1, len(attributes), sharey=True, squeeze=False, gridspec_kw={"width_ratios": widths}
    )[0]
    width = 0.8 / max(len(methods), 1)
    for axes, attribute in zip(panels, attributes):
        counts = {}
        for index, method in enumerate(methods):
            by_slice = {
                n: e for n, e in slices[method].get(attribute, {}).items() if n in names[attribute]
            }
            offset = (index - (len(methods) - 1) / 2) * width
            # max(0, .): a Wilson bound at 0% or 100% can miss the value by a rounding error
            errors = (
                [
                    [max(e["accuracy"] - e["ci_low"], 0.0) for e in by_slice.values()],
                    [max(e["ci_high"] - e["accuracy"], 0.0) for e in by_slice.values()],
                ]
                if all(_finite(e.get("ci_low")) for e in by_slice.values())
                else None
            )
            axes.bar(
                [names[attribute].index(n) + offset for n in by_slice],
                [entry["accuracy"] for entry in by_slice.values()],
                width=width,
                color=colours[method],
                label=method,
                yerr=errors,
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.25"},
            )
            for name, entry in by_slice.items():
                counts.setdefault(name, entry["n"])
        axes.set_xticks(
            range(len(names[attribute])),
            [f"{n}\n(n={counts[n]:.0f})" for n in names[attribute]],
            fontsize=8,
        )
        axes.set_xlim(-0.6, max(len(names[attribute]), 2) - 0.4)
        axes.set_title(SLICE_TITLES.get(attribute, attribute), fontsize=9)
        axes.grid(True, axis="y", alpha=0.3)
    panels[0].yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    panels[0].set_ylabel("test accuracy on the slice (%)")
    handles = [Patch(color=colours[method], label=method) for method in methods]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    figure.suptitle(title)
    figure.supxlabel("slice of the test images (n = images per run)", fontsize=9)
    return figure
