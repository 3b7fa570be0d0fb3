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
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

DPI = 150


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
