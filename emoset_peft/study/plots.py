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
from matplotlib.ticker import PercentFormatter

from emoset_peft.study.stats import ALL, per_class_sort_key

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
    return [[entry["mean"] - entry["ci_low"]], [entry["ci_high"] - entry["mean"]]]


def plot_metric_vs_k(
    summary: Sequence[Mapping],
    colours: Mapping[str, tuple],
    *,
    metric_label: str,
    title: str,
    chance: float | None = None,
) -> Figure:
    """Mean metric vs training images per class, one line per method, with a t-95% band.

    ``summary`` holds the dicts of ``stats.summarize_results``. The x axis is log2 k with the
    measured k as tick labels; k = 0 (zero-shot) is drawn left of the axis break as a marker
    plus a dotted horizontal reference, and ``"all"`` right of it as a marker with its own tick.
    """
    figure = Figure(figsize=(9.5, 5), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    int_ks = sorted({e["per_class"] for e in summary if e["per_class"] not in (0, ALL)})
    has_zero = any(e["per_class"] == 0 for e in summary)
    has_all = any(e["per_class"] == ALL for e in summary)
    low = math.log2(int_ks[0]) if int_ks else 0.0
    high = math.log2(int_ks[-1]) if int_ks else 0.0
    zero_x, all_x = low - OFF_AXIS_GAP, high + OFF_AXIS_GAP

    def position(k):
        return zero_x if k == 0 else all_x if k == ALL else math.log2(k)

    handles = []
    methods = list(dict.fromkeys(e["method"] for e in summary))
    # Off-axis markers (k = 0, all) of different methods are spread a little so that their
    # error bars do not hide each other.
    dodge = {m: (i - (len(methods) - 1) / 2) * min(0.12, 0.6 / len(methods))
             for i, m in enumerate(methods)}
    for method in methods:
        colour = colours[method]
        entries = sorted((e for e in summary if e["method"] == method),
                         key=lambda e: per_class_sort_key(e["per_class"]))
        curve = [e for e in entries if e["per_class"] not in (0, ALL)]
        if curve:
            x = [position(e["per_class"]) for e in curve]
            axes.plot(x, [e["mean"] for e in curve], "o-", color=colour, label=method, lw=2,
                      ms=5)
            axes.fill_between(x, [e["ci_low"] for e in curve], [e["ci_high"] for e in curve],
                              color=colour, alpha=0.18, lw=0)
        for entry in entries:
            if entry["per_class"] not in (0, ALL):
                continue
            marker = "D" if entry["per_class"] == 0 else "s"
            axes.errorbar([position(entry["per_class"]) + dodge[method]], [entry["mean"]],
                          yerr=_error_bar(entry), fmt=marker, color=colour, ms=7, capsize=4,
                          label=None if curve else method)
            if entry["per_class"] == 0:
                axes.axhline(entry["mean"], color=colour, ls=":", lw=1.2)
        handles.append(Line2D([], [], color=colour, marker="o", lw=2, label=method))

    if chance is not None:
        axes.axhline(chance, color="0.4", ls="--", lw=1)
        handles.append(Line2D([], [], color="0.4", ls="--", label=f"chance ({chance:.1%})"))
    if any(_finite(e["ci_low"]) for e in summary):
        handles.append(Patch(color="0.5", alpha=0.3, label="95% t-interval over seeds"))
    else:
        handles.append(Patch(color="none", label="one seed per point: no interval"))
    if has_zero:
        handles.append(Line2D([], [], color="0.3", marker="D", ls=":",
                              label="zero-shot (k = 0), dotted reference"))
    if has_all:
        handles.append(Line2D([], [], color="0.3", marker="s", ls="", label="full training set"))

    ticks = [position(k) for k in int_ks]
    labels = [str(k) for k in int_ks]
    if has_zero:
        ticks.insert(0, zero_x)
        labels.insert(0, "0\n(zero-shot)")
        axes.axvline((zero_x + low) / 2, color="0.8", lw=1)  # axis break
    if has_all:
        ticks.append(all_x)
        labels.append("all\n(full split)")
        axes.axvline((high + all_x) / 2, color="0.8", lw=1)
    axes.set_xticks(ticks, labels)
    axes.set_xlim(min(ticks, default=0) - 0.5, max(ticks, default=0) + 0.5)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.set_xlabel("training images per class, k (log2 scale)")
    axes.set_ylabel(f"{metric_label} (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
            axes.axhline(point["mean"], color=colour, ls=":", lw=1.5,
                         label=f"{point['method']} (k = 0, nothing trained)")
            continue
        axes.errorbar([point["params"]], [point["mean"]], yerr=_error_bar(point), fmt="o",
                      color=colour, ms=8, capsize=4, label=point["method"])
        share = ""
        if _finite(point.get("total_params")) and point["total_params"] > 0:
            share = f"\n{point['params'] / point['total_params']:.2%} of weights"
        axes.annotate(f"{point['method']}{share}", (point["params"], point["mean"]),
                      xytext=(7, 4), textcoords="offset points", fontsize=8, color=colour)
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
            axes.text(column, row, f"{shares[row, column]:.0%}", ha="center", va="center",
                      fontsize=7, color="white" if shares[row, column] > 0.55 else "black")
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
    printed under each slice). A slice a method lacks is simply not drawn for it.
    """
    methods = list(slices)
    attributes = [a for a in SLICE_TITLES if any(a in s for s in slices.values())]
    attributes += [a for s in slices.values() for a in s if a not in attributes]
    attributes = list(dict.fromkeys(attributes))
    names = {a: list(dict.fromkeys(n for s in slices.values() for n in s.get(a, {})))
             for a in attributes}
    if len(names.get("scene", [])) > MAX_SCENES:
        # Methods may disagree on their top scenes (different test subsets): show the scenes
        # with the most images over all methods.
        total = {n: sum(s.get("scene", {}).get(n, {}).get("n", 0) for s in slices.values())
                 for n in names["scene"]}
        names["scene"] = sorted(names["scene"], key=lambda n: -total[n])[:MAX_SCENES]
    widths = [max(len(names[a]), 2) for a in attributes]
    figure = Figure(figsize=(max(8.0, 0.95 * sum(widths) + 2.5), 4.8), dpi=DPI,
                    layout="constrained")
    panels = figure.subplots(1, len(attributes), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": widths})[0]
    width = 0.8 / max(len(methods), 1)
    for axes, attribute in zip(panels, attributes):
        counts = {}
        for index, method in enumerate(methods):
            by_slice = {n: e for n, e in slices[method].get(attribute, {}).items()
                        if n in names[attribute]}
            offset = (index - (len(methods) - 1) / 2) * width
            axes.bar([names[attribute].index(n) + offset for n in by_slice],
                     [entry["accuracy"] for entry in by_slice.values()], width=width,
                     color=colours[method], label=method)
            for name, entry in by_slice.items():
                counts.setdefault(name, entry["n"])
        axes.set_xticks(range(len(names[attribute])),
                        [f"{n}\n(n={counts[n]:.0f})" for n in names[attribute]], fontsize=8)
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


def plot_power_law(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    fits: Mapping[str, Mapping],
    colours: Mapping[str, tuple],
    *,
    title: str,
) -> Figure:
    """Test error vs k on log-log axes: each run as a dot, the fitted a*k^-b+c as a line."""
    figure = Figure(figsize=(8, 5), dpi=DPI)
    axes = figure.add_subplot()
    for method, (ks, errors) in points.items():
        colour = colours[method]
        axes.scatter(ks, errors, color=colour, s=14, alpha=0.6)
        fit = fits.get(method, {})
        if fit.get("ok"):
            grid = np.geomspace(min(ks), max(ks), 100)
            curve = fit["a"] * grid ** (-fit["b"]) + fit["c"]
            axes.plot(grid, curve, color=colour, lw=2,
                      label=f"{method}: b = {fit['b']:.2f}, c = {fit['c']:.1%}")
        else:
            axes.scatter([], [], color=colour, label=f"{method}: no fit")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    ks = sorted({k for ks, _ in points.values() for k in ks})
    if ks:
        axes.set_xticks(ks, [str(int(k)) for k in ks])
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.yaxis.set_minor_formatter(PercentFormatter(xmax=1, decimals=0))
    axes.set_xlabel("training images per class, k (log2 scale)")
    axes.set_ylabel("test error = 1 - accuracy (%, log scale)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best", title="fit: error = a·k^-b + c", title_fontsize=8)
    figure.tight_layout()
    return figure
