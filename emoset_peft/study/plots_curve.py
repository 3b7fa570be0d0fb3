"""The learning-curve figure of a study: a thin line per seed, the interval band, chance,
majority-class and zero-shot lines, and a panel of paired differences vs the baseline."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, PercentFormatter

from emoset_peft.study.per_class import ALL, per_class_sort_key
from emoset_peft.study.plots import DPI, _error_bar, _finite

# The zero-shot (k = 0) and full-data ("all") points sit this far (in log2 units) left and right
# of the measured k range, since log2(0) is undefined and "all" has no fixed k.
OFF_AXIS_GAP = 1.3


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


def _band_label(cells) -> str:
    """What the drawn intervals cover: seeds and test images only where the report prints them
    without † (1 seed: test images only; 2 seeds or 2 crossed seeds: a rough guess)."""
    shown = [e for e in cells if _finite(e.get("ci_low"))]
    parts = []
    if any(e.get("reliable", True) for e in shown) or not shown:
        parts.append("seeds x test images")
    if any(not e.get("reliable", True) and e.get("n_seeds") == 1 for e in shown):
        parts.append("† 1 seed: test images only")
    if any(not e.get("reliable", True) and e.get("n_seeds") != 1 for e in shown):
        parts.append("† few seeds: a rough guess")
    return f"95% interval ({'; '.join(parts)})"


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
    handles.append(Patch(color="0.5", alpha=0.3, label=_band_label(cells)))
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
