"""Report sections summarising whole learning curves and cells beyond their mean: AULC and its
pairwise table, data efficiency, scaling fits, planning, calibration, slices, variance split.

Rendered from the summary (``study/summary.py``) only. A summary part that withholds a number
(None with a reason) is printed as the reason, never as a number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from emoset_peft.study.fits import B_MAX
from emoset_peft.study.report_tables import (
    capital,
    interval,
    k_label,
    ok,
    p_value,
    pct,
    table,
)
from emoset_peft.study.summary import METRIC_LABELS


def _note(*texts) -> str:
    return "; ".join(t for t in texts if t) or ""


def render_aulc(summary: Mapping) -> list[str]:
    parts = summary.get("aulc") or {}
    if not parts:
        return []
    n_boot = summary["bootstrap"]["n_boot"]
    lines = [
        "## Area under the learning curve (AULC)",
        "",
        (
            "One number per method for the whole low-data range: the area under the mean "
            "curve over log2 k, divided by the log2 k range (so it reads as an average "
            "metric over the k range, in %). Only the k every method has are used. Intervals "
            f"and p from the same two-level bootstrap ({n_boot} draws); a seed's curve is "
            "resampled as one unit. P(improvement): the chance that a random seed of the first "
            "method beats one of the second (needs >= 5 seeds each)."
        ),
        "",
    ]
    for metric, part in parts.items():
        label = METRIC_LABELS[metric]
        if part["reason"]:
            lines += [f"{capital(label)}: no AULC, {part['reason']}.", ""]
            continue
        ks = ", ".join(map(str, part["ks_used"]))
        lines += [f"**{capital(label)}**, k in {{{ks}}}:", ""]
        lines += table(
            ["method", "AULC (%)", "95% interval", "seeds", "note"],
            [
                [
                    method,
                    pct(entry["aulc"]),
                    interval(entry["ci_low"], entry["ci_high"]),
                    entry["n_replicates"],
                    entry["reason"] or "",
                ]
                for method, entry in part["methods"].items()
            ],
        )
        if part["pairs"]:
            rows = []
            for pair in part["pairs"]:
                if pair["difference"] is None:
                    rows.append(
                        [
                            f"{pair['a']} - {pair['b']}",
                            "n/a",
                            "n/a",
                            "n/a",
                            "n/a",
                            pair["reason"] or "",
                        ]
                    )
                    continue
                poi = (
                    (
                        "n/a: crossed seeds"
                        if str(pair.get("poi_reason")).startswith("crossed")
                        else "n/a: fewer than 5 seeds"
                    )
                    if pair["probability_of_improvement"] is None
                    else f"{pair['probability_of_improvement']:.2f} "
                    f"{_fraction_interval(pair['poi_ci_low'], pair['poi_ci_high'])}"
                )
                few = pair.get("p_value") is None
                why = pair.get("p_short") or f"{pair.get('n_paired')} pair(s)"
                rows.append(
                    [
                        f"{pair['a']} - {pair['b']}",
                        pct(pair["difference"], 2),
                        interval(pair["ci_low"], pair["ci_high"], 2),
                        f"n/a: {why}" if few else p_value(pair["p_value"]),
                        poi,
                        pair["reason"] or "",
                    ]
                )
            lines += table(
                [
                    "pair",
                    "AULC difference (pp)",
                    "95% interval",
                    "bootstrap p",
                    "P(improvement)",
                    "note",
                ],
                rows,
            )
    return lines


def _fraction_interval(low, high) -> str:
    return f"[{low:.2f}, {high:.2f}]" if ok(low) and ok(high) else ""


def render_efficiency(summary: Mapping) -> list[str]:
    part = (summary.get("efficiency") or {}).get("accuracy")
    if not part:
        return []
    lines = ["## Data efficiency", ""]
    if part["reason"]:
        return lines + [f"No data-efficiency estimate: {part['reason']}.", ""]
    lines += [
        (
            f"The k (images per class) each method needs to reach one common test accuracy of "
            f"{pct(part['target'])}% ({part['target_source']}), interpolated in log2 k on "
            "the mean curve; the interval comes from the same bootstrap. `<= k` means "
            "already reached at the smallest k, `> k` not reached within the measured k."
        ),
        "",
    ]
    rows = []
    for method, entry in part["methods"].items():
        low, high = entry["ci_low"], entry["ci_high"]
        rows.append(
            [
                method,
                entry["k_needed"]["text"],
                f"[{low['text']}, {high['text']}]" if low and high else "n/a",
                entry["n_replicates"],
                entry["reason"] or "",
            ]
        )
    return lines + table(["method", "k needed", "95% interval", "seeds", "note"], rows)


def render_fits(summary: Mapping) -> list[str]:
    part = (summary.get("fits") or {}).get("accuracy")
    if not part:
        return []
    lines = [
        "## Scaling fits",
        "",
        (
            f"{part['model']}, fitted to each method's mean error curve at k >= 1, only with "
            ">= 4 distinct k and >= 3 seeds at every k. Intervals of b and c refit every "
            f"bootstrap draw ({part['n_boot']}). Extrapolation check: fit without the largest "
            "k, predict it, and compare (error in pp of accuracy)."
        ),
        "",
    ]
    rows, comparisons = [], []
    for method, fit in part["methods"].items():
        if not fit["fitted"]:
            rows.append([method, "no fit", "", "", "", "", fit["reason"]])
            continue
        free, zero = fit["free_c"], fit["c_zero"]
        extrapolation = fit["extrapolation"]
        held = extrapolation["free_c"]
        rows.append(
            [
                method,
                _exponent(free),
                f"{pct(free['c'])} "
                + (
                    "(no interval: b not identified)"
                    if free.get("c_reason")
                    else interval(free["c_ci_low"], free["c_ci_high"])
                ),
                _exponent(zero),
                (
                    f"k = {extrapolation['k_held_out']}: {held['error_pp']:+.1f} pp "
                    f"{_plain_interval(held['error_pp_ci_low'], held['error_pp_ci_high'], 1)}"
                ),
                fit["n_replicates"],
                _note(free.get("note"), extrapolation.get("note")),
            ]
        )
        comparisons.append(f"- {method}: {fit['comparison']['text']}.")
    lines += table(
        [
            "method",
            "b (free c) [95%]",
            "c % (free c) [95%]",
            "b (c = 0) [95%]",
            "extrapolation error (free c) [95%]",
            "seeds",
            "note",
        ],
        rows,
    )
    if comparisons:
        lines += ["c = 0 against a free c:", "", *comparisons, ""]
    return lines


def _exponent(fit: Mapping) -> str:
    """b with its interval, in words where b is not identified or the interval reaches the
    exponent's search bound (the bound is where the optimiser stopped, not an estimate)."""
    if fit.get("b") is None:
        return "not identified (flat curve)"
    high = fit["b_ci_high"]
    if ok(high) and high >= B_MAX - 1e-6 and ok(fit["b_ci_low"]):
        return f"{fit['b']:.2f} [{fit['b_ci_low']:.2f}, search bound {B_MAX:g}]"
    return f"{fit['b']:.2f} {_plain_interval(fit['b_ci_low'], high)}"


def _plain_interval(low, high, digits: int = 2) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]" if ok(low) and ok(high) else "[n/a]"


def render_planning(summary: Mapping) -> list[str]:
    entries = [e for e in summary.get("planning") or [] if e.get("by_seeds")]
    if not summary.get("planning"):
        return []
    lines = ["## Planning the next study", ""]
    if not entries:
        notes = sorted({e.get("note") or "" for e in summary["planning"]} - {""})
        return lines + [f"No projection: {'; '.join(notes) or 'nothing to project from'}.", ""]
    lines += [
        (
            "For the spreads observed here (seed SD beyond test noise, and the test-image "
            "noise all seeds share), the expected half-width of a cell's 95% interval and the "
            "minimum detectable difference (MDD: found with 80% power by a two-sided 5% test) "
            "at other seed counts, and the seeds a ±1 pp interval needs. Test accuracy. "
            "At a cell's own seed count the half-width is that of its printed interval "
            "(the note says when the printed one is cut at 0% or 100%). "
            "The MDD assumes the other method has the same noise and shares none of it; "
            "pairing on seeds and images (the paired comparisons) usually does better."
        ),
        "",
    ]
    seeds = sorted({item["seeds"] for e in entries for item in e["by_seeds"]})
    rows = []
    for e in entries:
        by = {item["seeds"]: item for item in e["by_seeds"]}
        cells = [
            f"±{pct(by[n]['half_width'])} / {pct(by[n]['mdd_80'])}" if n in by else "n/a"
            for n in seeds
        ]
        target = e.get("seeds_for_target")
        # The MDD caveat is said once above the table; the other notes stay with their row.
        note = re.sub(r"MDD assumes[^)]*\)", "", e.get("note") or "")
        notes = [n.strip() for n in note.split("; ") if n.strip()]
        unreachable = next((n for n in notes if "not reachable" in n), None)
        if target is None and unreachable:
            notes.remove(unreachable)
            target = "none: " + unreachable.split(": ", 1)[-1]
        rows.append(
            [
                e["method"],
                k_label(e["per_class"]),
                e["n_replicates"],
                *cells,
                target if target is not None else "n/a",
                e.get("dominant") or "",
                "; ".join(notes),
            ]
        )
    return lines + table(
        [
            "method",
            "k",
            "seeds now",
            *[f"{n} seeds: half-width / MDD (pp)" for n in seeds],
            "seeds for ±1 pp",
            "larger noise now",
            "note",
        ],
        rows,
    )


def render_calibration(summary: Mapping) -> list[str]:
    entries = summary.get("calibration") or []
    if not entries:
        return []
    lines = [
        "## Calibration",
        "",
        (
            "From the saved class probabilities, per seed then averaged: NLL (mean negative "
            "log-likelihood of the true class; lower is better) and ECE (expected calibration "
            "error, 15 equal-width confidence bins, in pp; 0 = confidence matches accuracy)."
        ),
        "",
    ]

    def sd(value, fmt) -> str:
        return f" ± {fmt(value)}" if value is not None else ""

    rows = []
    for e in entries:
        if e["nll"] is None:
            rows.append([e["method"], k_label(e["per_class"]), "n/a", "n/a", e["reason"]])
            continue
        rows.append(
            [
                e["method"],
                k_label(e["per_class"]),
                f"{e['nll']:.3f}{sd(e['nll_sd'], lambda v: f'{v:.3f}')}",
                f"{pct(e['ece'])}{sd(e['ece_sd'], pct)}",
                e["reason"] or "",
            ]
        )
    return lines + table(["method", "k", "NLL (± SD over seeds)", "ECE (pp, ± SD)", "note"], rows)


def render_slices(summary: Mapping) -> list[str]:
    entries = summary.get("slices") or []
    lines = ["## Accuracy by image attribute", ""]
    if not entries:
        return lines + ["No per-attribute slices were found in the runs' metrics.json.", ""]
    lines += [
        (
            "Each method at its largest k; accuracy averaged over seeds with a 95% Wilson "
            "interval over the slice's test images (test-image noise only). Slices of fewer "
            "than 30 images are marked *small*: their accuracy moves by >= 3 pp per image."
        ),
        "",
    ]
    rows = []
    for entry in entries:
        for attribute, by_slice in entry["attributes"].items():
            for name, s in by_slice.items():
                rows.append(
                    [
                        entry["method"],
                        k_label(entry["per_class"]),
                        attribute,
                        name,
                        s["n"],
                        pct(s["accuracy"]),
                        interval(s["ci_low"], s["ci_high"]),
                        "small" if s["small"] else "",
                    ]
                )
    return lines + table(
        ["method", "k", "attribute", "slice", "images", "accuracy (%)", "95% Wilson interval", ""],
        rows,
    )


def render_variance(summary: Mapping) -> list[str]:
    entries = summary.get("variance_split") or []
    if not entries:
        return []
    crossed = [e for e in entries if e["crossed"]]
    lines = ["## Where the seed spread comes from", ""]
    if not crossed:
        reasons = list(dict.fromkeys(e["reason"] for e in entries if e["reason"]))
        return lines + [f"No split: {reasons[0] if reasons else 'no cell qualifies'}.", ""]
    lines += [
        (
            "Data and training seeds are crossed, so a two-way analysis of variance splits "
            "each cell's spread of test accuracy into the data sample (which training "
            "images), training (initialisation, order) and their residual. Test-set noise "
            "is not part of this split."
        ),
        "",
    ]
    rows = []
    for e in crossed:
        shares, sd = e["shares"], e["sd_pp"]
        rows.append(
            [
                e["method"],
                k_label(e["per_class"]),
                *[
                    f"{sd[p]:.1f} ({shares[p]:.0%})" if shares[p] is not None else f"{sd[p]:.1f}"
                    for p in ("data", "train", "residual")
                ],
                e["note"] or "",
            ]
        )
    return lines + table(
        [
            "method",
            "k",
            "data SD pp (share)",
            "training SD pp (share)",
            "residual SD pp (share)",
            "note",
        ],
        rows,
    )


SECTIONS = (
    render_aulc,
    render_efficiency,
    render_fits,
    render_planning,
    render_calibration,
    render_variance,
    render_slices,
)
