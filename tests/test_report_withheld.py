"""What a report withholds and why (QA findings): crossed seeds count as fewer independent units
than pairs, unidentified fit parameters, planning consistent with the printed intervals,
wording for one k, honest figure legends, how to retry failed cells."""

from __future__ import annotations

import json

import pytest
from fixtures_study import make_fake_study, write_results
from test_curves_fits import power_curves
from test_report import _section, _table_rows

from emoset_peft.study import report as report_module
from emoset_peft.study.bootstrap import seed_units
from emoset_peft.study.fits import B_MAX, scaling_fits
from emoset_peft.study.inference import guarded_t_test, p_withheld
from emoset_peft.study.plots_curve import plot_learning_curve
from emoset_peft.study.report_curves import render_fits
from emoset_peft.study.report_tables import render_notes
from emoset_peft.study.summary import build_summary

N_BOOT = 200


def _crossed_study(directory, n_seeds: int):
    """``n_seeds`` data seeds x ``n_seeds`` training seeds (a data seed's training seeds reuse
    its run folder: the design is what matters here, not the training spread)."""
    rows = make_fake_study(
        directory,
        seeds=tuple(range(n_seeds)),
        ks=(2, 8),
        methods=("linear", "lora"),
        zero_shot=False,
        full=False,
    )
    crossed = [
        {**row, "train_seed": train, "seed": f"{row['data_seed']}{train}"}
        for row in rows
        for train in range(n_seeds)
    ]
    write_results(directory / "results.csv", crossed)
    report_module.write_report(directory, n_boot=N_BOOT)
    text = (directory / "report.md").read_text()
    return text, json.loads((directory / "summary.json").read_text())


def test_seed_units_count_crossed_designs_by_their_smaller_factor():
    assert seed_units([(0, 0), (1, 1), (2, 2)]) == (3, True)  # paired default
    assert seed_units([(0, 5), (1, 5), (2, 5)]) == (3, True)  # one training seed for all
    crossed = [(d, t) for d in range(2) for t in range(5)]
    assert seed_units(crossed) == (2, False)
    assert seed_units([(0, 0), (0, 1), (1, 0)]) == (2, False)  # crossed with a failed cell
    assert p_withheld(crossed)[0] == "2 data seeds"
    assert p_withheld([(0, 0), (1, 1)])[0] == "2 pair(s)"
    assert p_withheld([(d, t) for d in range(3) for t in range(3)]) is None
    t_test = guarded_t_test(
        [0.5, 0.6, 0.4, 0.7], [0.4, 0.4, 0.4, 0.4], [(0, 0), (0, 1), (1, 0), (1, 1)]
    )
    assert t_test["p"] is None and "crossed" in t_test["reason"]


def test_two_by_two_crossed_seeds_give_no_p_value(tmp_path):
    text, summary = _crossed_study(tmp_path, 2)
    for label in ("test accuracy", "test macro-F1"):
        rows = _table_rows(_section(text, f"## Paired differences vs `linear` ({label})"))
        assert len(rows) == 2
        for row in rows:
            assert row[2] == "4"  # 4 pairs, but only 2 data and 2 training seeds
            assert row[5] == row[6] == row[7] == "n/a: 2 data seeds and 2 training seeds"
            assert row[9].startswith("n/a: crossed seeds")
    for entry in summary["paired"]:
        assert entry["p_boot"] is entry["p_holm"] is entry["p_bh"] is entry["t_p"] is None
        assert "not independent" in entry["p_reason"]
    aulc = _section(text, "## Area under the learning curve")
    pairs = [row for row in _table_rows(aulc) if " - " in row[0]]
    assert pairs and all(row[3] == "n/a: 2 data seeds and 2 training seeds" for row in pairs)
    assert all(p["p_value"] is None for p in summary["aulc"]["accuracy"]["pairs"])
    cannot = _section(text, "## What this study cannot say")
    assert "No p-value: crossed seeds (2 data x 2 training seeds, 4 pairs)" in cannot
    assert "No projection: crossed seeds" in cannot
    assert all(entry["by_seeds"] is None for entry in summary["planning"])
    assert "No projection: crossed seeds" in _section(text, "## Planning the next study")


def test_three_by_three_crossed_seeds_give_a_p_value_but_no_t_test(tmp_path):
    text, summary = _crossed_study(tmp_path, 3)
    assert all(entry["p_boot"] is not None for entry in summary["paired"])
    assert all(entry["t_p"] is None for entry in summary["paired"])
    rows = _table_rows(_section(text, "## Paired differences vs `linear` (test accuracy)"))
    assert all(row[9].startswith("n/a: crossed seeds") for row in rows)
    assert all(not row[5].startswith("n/a") for row in rows)
    assert "No paired t-test: crossed seeds" in _section(text, "## What this study cannot say")


def test_unidentified_exponent_is_words_not_bounds():
    fits = scaling_fits(power_curves(a=0.0, noise=0.0))
    free = fits["methods"]["m"]["free_c"]
    assert "flat" in free["note"]
    assert free["b"] is free["b_ci_low"] is free["b_ci_high"] is None
    assert free["c_ci_low"] is free["c_ci_high"] is None
    assert free["b_reason"].startswith("not identified") and free["c_reason"]
    assert free["c"] == pytest.approx(0.15)  # the flat level itself is a finding
    row = _table_rows("\n".join(render_fits({"fits": {"accuracy": fits}})))[0]
    assert row[1] == "not identified (flat curve)"
    assert row[2].endswith("(no interval: b not identified)")
    assert f"{B_MAX:.2f}" not in " ".join(row)


def test_planning_at_the_observed_seed_count_is_the_printed_interval(tmp_path):
    """Also where the seeds agree more than their test noise predicts (the seed part beyond
    test noise floored to 0): the projection used to add that test noise back."""
    make_fake_study(tmp_path, seeds=(0, 1, 2), ks=(1, 2, 4), methods=("linear", "lora"))
    report_module.write_report(tmp_path, n_boot=N_BOOT)
    summary = json.loads((tmp_path / "summary.json").read_text())
    plans = {(p["method"], p["per_class"]): p for p in summary["planning"]}
    checked = 0
    for cell in summary["cells"]:
        plan = plans.get((cell["method"], cell["per_class"]))
        if cell["metric"] != "accuracy" or plan is None or not plan["by_seeds"]:
            continue
        at_three = next(row for row in plan["by_seeds"] if row["seeds"] == 3)
        printed = (cell["ci_high"] - cell["ci_low"]) / 2
        if "cut at" in (plan["note"] or ""):
            assert printed < at_three["half_width"]
        else:
            assert at_three["half_width"] == pytest.approx(printed, rel=1e-9)
            checked += 1
    assert checked >= 6
    for entry in summary["paired"]:  # the paired differences' planning likewise
        by = {row["seeds"]: row for row in entry["planning"]["by_seeds"]}
        printed = (entry["ci_high"] - entry["ci_low"]) / 2
        assert by[3]["half_width"] == pytest.approx(printed, rel=1e-9)


def test_one_k_says_nesting_does_not_apply_and_why_there_is_no_curve(tmp_path):
    make_fake_study(
        tmp_path, seeds=(0, 1), ks=(2,), methods=("linear", "lora"), zero_shot=False, full=False
    )
    text = report_module.write_report(tmp_path, n_boot=N_BOOT).read_text()
    assert "larger-k images): does not apply (one k: 2)." in _section(text, "## Protocol")
    cannot = _section(text, "## What this study cannot say")
    assert "a curve needs >= 2 values of k >= 1 (measured k = 2 only)" in cannot
    assert "(k >= 1):" not in cannot and "common k: none" not in cannot


def _legend(summary) -> list[str]:
    figure = plot_learning_curve(
        summary["cells"],
        summary["replicates"],
        [],
        {"linear": "C0", "lora": "C1"},
        metric="accuracy",
        metric_label="test accuracy",
        baseline="linear",
        title="t",
    )
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_curve_legend_says_what_its_intervals_cover(tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    for directory, seeds in ((one, (0,)), (three, (0, 1, 2))):
        directory.mkdir()
        make_fake_study(
            directory, seeds=seeds, ks=(1, 2), methods=("linear", "lora"), zero_shot=False
        )
    band = [t for t in _legend(_summary(one)) if t.startswith("95% interval")]
    assert band == ["95% interval († 1 seed: test images only)"]
    band = [t for t in _legend(_summary(three)) if t.startswith("95% interval")]
    assert band == ["95% interval (seeds x test images)"]
    # Two k and no train_manifest.json: nesting is unknown, for that reason.
    for manifest in three.glob("runs/*/train_manifest.json"):
        manifest.unlink()
    assert _summary(three)["protocol"]["nested_unknown"] == "unknown (no train_manifest.json)"


def _summary(directory):
    return build_summary(report_module.load_study(directory), n_boot=50)


def test_failed_cells_section_says_how_to_retry():
    failed = {"cell": "linear k=8 seed=2", "line": 7, "error": "non-finite loss at step 3"}
    text = "\n".join(render_notes({"failed_cells": [failed]}))
    assert "Rerunning the study does not retry them" in text
    assert "delete its line from results.csv and rerun the same `emoset-peft study`" in text
    assert "| linear k=8 seed=2 | 7 | non-finite loss at step 3 |" in text
