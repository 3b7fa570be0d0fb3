"""Markdown tables of a study report, rendered from the summary (``study/summary.py``).

Nothing here computes a statistic: every number comes from the summary dict, so report.md and
summary.json cannot disagree. Where the summary withholds a number (value None with a reason)
the table says why in words. Metrics are fractions in the summary and percent here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from emoset_peft.metrics.registry import METRICS

MIN_PAIRS_FOR_P = 3  # a p-value from 1-2 pairs says nothing: never printed


def table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows]
    return lines + [""]


def ok(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(value, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}" if ok(value) else "n/a"


def interval(low, high, digits: int = 1) -> str:
    if not (ok(low) and ok(high)):
        return "n/a"
    return f"[{pct(low, digits)}, {pct(high, digits)}]"


def p_value(value) -> str:
    if not ok(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def k_label(k) -> str:
    return "0 (zero-shot)" if k == 0 else str(k)


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]  # str.capitalize would turn "macro-F1" into "macro-f1"


# ---------------------------------------------------------------------------------------------
# Sections


def render_notes(summary: Mapping, max_listed: int = 30) -> list[str]:
    """Rows of results.csv ignored or corrected, failed cells, other problems."""
    lines = []
    notes = summary.get("rows_ignored") or []
    if notes:
        lines += [
            "## Rows ignored or corrected",
            "",
            (
                f"{len(notes)} row(s) or value(s) of results.csv were not used as written "
                "(a cell's metrics.json is the source of truth when they disagree):"
            ),
            "",
        ]
        lines += [f"- {note['text']}" for note in notes[:max_listed]]
        if len(notes) > max_listed:
            lines.append(f"- ... and {len(notes) - max_listed} more (all in summary.json)")
        lines.append("")
    failed = summary.get("failed_cells") or []
    if failed:
        lines += [
            "## Failed cells",
            "",
            (
                "Recorded as failed by the study; left out of every statistic below. "
                "Rerunning the study does not retry them: a failed row counts as done, like "
                "a finished one. To retry a cell with the same settings, delete its line from "
                "results.csv and rerun the same `emoset-peft study` command (only that cell "
                "trains; its run folder is replaced). Changed settings (e.g. a lower train.lr) "
                "make it a new cell, which needs `allow_grid_change=true`."
            ),
            "",
        ]
        lines += table(
            ["cell", "results.csv line", "error"],
            [[cell["cell"], cell["line"], cell["error"]] for cell in failed],
        )
    problems = summary.get("problems") or []
    if problems:
        lines += ["## Problems found", ""] + [f"- {p}" for p in problems[:max_listed]]
        if len(problems) > max_listed:
            lines.append(f"- ... and {len(problems) - max_listed} more")
        lines.append("")
    return lines


def render_withheld(summary: Mapping) -> list[str]:
    """One line per kind of statement the data cannot support (grouped, not per cell)."""
    items = summary.get("withheld") or []
    if not items:
        return []
    grouped: dict[str, list[str]] = {}
    for item in items:
        grouped.setdefault(item["reason"], []).append(item["subject"])
    lines = [
        "## What this study cannot say",
        "",
        (
            "These numbers are withheld (or marked) because the data cannot support them; "
            "more seeds or more k would."
        ),
        "",
    ]
    for reason, subjects in grouped.items():
        shown = ", ".join(subjects[:6]) + (
            f", ... ({len(subjects)} in all)" if len(subjects) > 6 else ""
        )
        lines.append(f"- {capital(reason)}: {shown}.")
    return lines + [""]


def render_cells(summary: Mapping, metric: str, label: str) -> list[str]:
    entries = [e for e in summary["cells"] if e["metric"] == metric]
    if not entries:
        return []
    n_boot = summary["bootstrap"]["n_boot"]
    lines = [
        f"## {capital(label)} per cell",
        "",
        (
            f"Mean over seeds; the 95% interval covers another run of the study with other "
            "seeds and another test set of the same size: the spread between seeds (Student-t "
            f"on the seeds, so few seeds widen it) plus the test-image noise ({n_boot} bootstrap "
            "draws of the test images, the same draw for every cell); it stays inside "
            "[0, 100]. Seed SD: spread between seeds. Test SE: standard error of one "
            "run on this test set (Wilson for accuracy, bootstrap over test images for "
            "macro-F1). Share: how the variance of the mean splits between seeds (beyond their "
            "test noise) and test images. † marks an interval the data cannot make reliable "
            "(1 or 2 seeds, or only 2 crossed data or training seeds; see 'What this study "
            "cannot say')."
        ),
        "",
    ]
    rows = []
    for e in entries:
        mark = "" if e["reliable"] or e["ci_low"] is None else " †"
        share = (
            "n/a" if e["share_seed"] is None else f"{e['share_seed']:.0%} / {e['share_test']:.0%}"
        )
        rows.append(
            [
                e["method"],
                k_label(e["per_class"]),
                e["n_seeds"],
                pct(e["mean"]),
                interval(e["ci_low"], e["ci_high"]) + mark,
                pct(e["seed_sd"]) if e["seed_sd"] is not None else "n/a (1 seed)",
                pct(e["test_se"]),
                share,
                e["n_test"] or "n/a",
            ]
        )
    return lines + table(
        [
            "method",
            "k",
            "seeds",
            "mean (%)",
            "95% interval",
            "seed SD (pp)",
            "test SE (pp)",
            "variance share seed / test",
            "test images",
        ],
        rows,
    )


def render_paired(summary: Mapping, metric: str, label: str) -> list[str]:
    entries = [e for e in summary.get("paired", []) if e["metric"] == metric]
    baseline = summary["baseline"]
    lines = [
        f"## Paired differences vs `{baseline}` ({label})",
        "",
        (
            "Difference = method - baseline in percentage points on the same test images and "
            "the same seeds (paired), with an interval built like the cells' (seed spread of "
            "the differences + test-image bootstrap) and its two-sided p-value. Holm and BH "
            "adjust that p over every comparison in this report (all methods, k and metrics). McNemar: "
            "exact test per seed on the images where the two disagree (method right / baseline "
            f"right). A p-value needs at least {MIN_PAIRS_FOR_P} independent seed pairs (with "
            f"crossed seeds: {MIN_PAIRS_FOR_P} data and {MIN_PAIRS_FOR_P} training seeds, since "
            "the D x T pairs share seeds; no t-test, which assumes independent pairs); † marks "
            "an interval from 1 or 2 pairs or seeds (test-image noise only, or very wide)."
        ),
        "",
    ]
    if not entries:
        why = (
            "No other method shares a k with the baseline."
            if summary["test_set"]["n_images"]
            else "No comparison: no cell has a readable predictions_test.csv."
        )
        return lines + [why, ""]
    rows = []
    for e in entries:
        # Withheld p-values say why in the summary's words (few pairs, or crossed seeds that
        # count as fewer independent units than pairs).
        few = e.get("p_boot") is None
        why = f"n/a: {e.get('p_short') or str(e['n_pairs']) + ' pair(s)'}"
        mark = " †" if e.get("reliable") is False and e["ci_low"] is not None else ""
        rows.append(
            [
                e["method"],
                k_label(e["per_class"]),
                e["n_pairs"],
                pct(e["diff"], 2),
                interval(e["ci_low"], e["ci_high"], 2) + mark,
                why if few else p_value(e["p_boot"]),
                why if few else p_value(e["p_holm"]),
                why if few else p_value(e["p_bh"]),
                _mcnemar(e.get("mcnemar") or []) if metric == "accuracy" else "(accuracy only)",
                f"n/a: {e['t_note']}" if e.get("t_p") is None else p_value(e["t_p"]),
            ]
        )
    return lines + table(
        [
            "method",
            "k",
            "pairs",
            "difference (pp)",
            "95% interval",
            "p (two-level)",
            "Holm",
            "BH",
            "McNemar per seed (b/c, p)",
            "t-test p",
        ],
        rows,
    )


def _mcnemar(tests: Sequence[Mapping]) -> str:
    if not tests:
        return "n/a"
    shown = [f"{t['b']}/{t['c']} p={p_value(t['p'])}" for t in tests[:5]]
    significant = sum(1 for t in tests if ok(t["p"]) and t["p"] < 0.05)
    more = f" ... ({len(tests)} seeds)" if len(tests) > 5 else ""
    return "; ".join(shown) + more + f" ({significant}/{len(tests)} at p < 0.05)"


def render_other_metrics(summary: Mapping) -> list[str]:
    """One column per registry metric of ``summary["other_metrics"]`` (seed mean, % +- SD)."""
    entries = summary.get("other_metrics") or []
    names = [name for name in METRICS if entries and name in entries[0]]
    if not names:
        return []
    rows = [
        [
            e["method"],
            k_label(e["per_class"]),
            e["n_seeds"],
            *(_mean_sd(e[name], e[f"{name}_sd"]) for name in names),
        ]
        for e in entries
    ]
    header = [
        f"{METRICS[name].display} (%, {'↑' if METRICS[name].higher_is_better else '↓'})"
        for name in names
    ]
    return [
        "## Other test metrics",
        "",
        (
            "Mean over seeds ± seed SD, from results.csv (no interval: the bootstrap resamples "
            "accuracy and macro-F1 only). ↑ higher is better, ↓ lower is better; n/a: no row "
            "of the cell has the metric (a study older than it)."
        ),
        "",
    ] + table(["method", "k", "seeds", *header], rows)


def _mean_sd(mean, sd) -> str:
    if not ok(mean):
        return "n/a"
    return pct(mean) + (f" ± {pct(sd)}" if ok(sd) else "")


def render_cost(cost: Sequence[Mapping]) -> list[str]:
    if not cost:
        return []
    return ["## Cost", ""] + table(
        [
            "method",
            "trainable params",
            "total params",
            "trainable share",
            "k",
            "mean train time at k (s)",
        ],
        [
            [
                c["method"],
                _params(c["trainable"]),
                _params(c["total"]),
                f"{c['trainable'] / c['total']:.3%}"
                if ok(c["total"]) and c["total"] > 0 and ok(c["trainable"])
                else "n/a",
                k_label(c["per_class"]),
                f"{c['seconds']:.1f}" if ok(c["seconds"]) else "n/a",
            ]
            for c in cost
        ],
    )


def _params(value) -> str:
    if not ok(value):
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{int(value)}"
