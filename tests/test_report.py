"""report.md, summary.json/.csv and figures of a fake scaling study: files, table numbers against
independent computations, plot contents, withheld statements, protocol block, errors."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from fixtures_study import make_fake_study, write_results

from emoset_peft.cli import main
from emoset_peft.errors import EmoSetError
from emoset_peft.study import report as report_module
from emoset_peft.study.summary_files import CSV_COLUMNS

N_BOOT = 400  # enough for the checks here, keeps each report well under a second


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _table_rows(section: str) -> list[list[str]]:
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    directory = tmp_path_factory.mktemp("study")
    rows = make_fake_study(directory)
    path = report_module.write_report(directory, n_boot=N_BOOT)
    summary = json.loads((directory / "summary.json").read_text())
    return directory, rows, path, summary


def test_report_summary_and_every_figure_exist(study):
    directory, _, path, summary = study
    assert path == directory / "report.md"
    text = path.read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    expected = {
        "accuracy_vs_k.png",
        "macro_f1_vs_k.png",
        "accuracy_vs_params.png",
        "calibration.png",
        "attribute_slices.png",
        "confusion_linear.png",
        "confusion_lora.png",
        "confusion_vpt.png",
        "confusion_zeroshot.png",
    }
    assert expected <= set(figures)
    for name in figures:
        assert (directory / name).stat().st_size > 10_000, name  # a real 150-dpi image
        assert (directory / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "methods: [linear, lora, vpt]" in text  # the config is quoted
    assert summary["bootstrap"]["n_boot"] == N_BOOT and summary["bootstrap"]["seed"] == 0
    assert f"{N_BOOT} draws, RNG seed 0" in text
    assert summary["baseline"] == "linear" and summary["test_set"]["n_images"] == 160
    assert {
        "cells",
        "replicates",
        "paired",
        "aulc",
        "efficiency",
        "fits",
        "planning",
        "calibration",
        "reliability",
        "slices",
        "variance_split",
        "protocol",
        "withheld",
        "rows_ignored",
        "failed_cells",
        "problems",
        "cost",
    } <= set(summary)


def test_cell_table_equals_summary_and_results(study):
    _directory, rows, path, summary = study
    table = _table_rows(_section(path.read_text(), "## Test accuracy per cell"))
    cells = [e for e in summary["cells"] if e["metric"] == "accuracy"]
    assert len(table) == len(cells) == 3 * 4 + 1 + 2
    for cells_text, entry in zip(table, cells):
        method, k, n, mean, ci, seed_sd, test_se, share, n_test = cells_text
        assert method == entry["method"] and k.split()[0] == str(entry["per_class"])
        # Independent: the mean and SD of results.csv's accuracies (computed by the fake
        # study from the same predictions the summary bootstraps).
        values = [
            r["test_accuracy"]
            for r in rows
            if r["method"] == method and str(r["per_class"]) == k.split()[0]
        ]
        assert int(n) == len(values) == 3 and int(n_test) == 160
        assert mean == _pct(np.mean(values)) == _pct(entry["mean"])
        assert seed_sd == _pct(np.std(values, ddof=1))
        assert ci == f"[{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}]"
        assert 0 <= entry["ci_low"] <= entry["mean"] <= entry["ci_high"] <= 1
        # The Wilson score interval's half-width / 1.96, for the mean accuracy on 160 images.
        p, n, z = entry["mean"], 160, 1.959963984540054
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        assert test_se == _pct(half / z)
        assert share.endswith("%") and entry["share_seed"] + entry["share_test"] == pytest.approx(1)


def test_summary_csv_is_the_cell_table(study):
    directory, _, _, summary = study
    with open(directory / "summary.csv", newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        written = list(reader)
    assert len(written) == len(summary["cells"])
    for row, entry in zip(written, summary["cells"]):
        assert (row["method"], row["per_class"], row["metric"]) == (
            entry["method"],
            str(entry["per_class"]),
            entry["metric"],
        )
        assert float(row["mean"]) == pytest.approx(entry["mean"])
        assert float(row["ci_low"]) == pytest.approx(entry["ci_low"])
        assert row["reliable"] == "True"


def test_learning_curve_figure(study):
    directory, rows, _, summary = study
    study_obj = report_module.load_study(directory)
    figures = report_module.build_figures(study_obj, summary)
    top, bottom = figures["accuracy_vs_k.png"].axes
    thick = [line for line in top.lines if line.get_linewidth() > 2]
    thin = [line for line in top.lines if line.get_linewidth() < 1]
    assert len(thick) == 3  # one mean curve per trained method
    assert len(thin) == 3 * 3  # a line per seed per trained method
    for line in thick:
        x, y = line.get_data()
        assert np.allclose(x, np.log2([1, 2, 4, 8]))
    means = {
        e["mean"]
        for e in summary["cells"]
        if e["metric"] == "accuracy" and e["per_class"] in (1, 2, 4, 8)
    }
    assert all(any(np.isclose(v, m) for m in means) for line in thick for v in line.get_ydata())
    seed_values = {r["test_accuracy"] for r in rows if r["per_class"] in (1, 2, 4, 8)}
    assert all(
        any(np.isclose(v, s) for s in seed_values) for line in thin for v in line.get_ydata()
    )
    bands = [c for c in top.collections if "PolyCollection" in c.__class__.__name__]
    assert len(bands) == 3  # one 95% band per trained method
    for band in bands:
        y = band.get_paths()[0].vertices[:, 1]
        assert y.min() >= 0 and y.max() <= 1
    horizontal = {
        round(float(line.get_ydata()[0]), 4): line.get_linestyle()
        for line in top.lines  # axhline: 2 points at one height
        if len(line.get_ydata()) == 2 and len(set(line.get_ydata())) == 1
    }
    assert horizontal[0.125] == "--"  # chance
    assert horizontal[round(summary["test_set"]["majority"], 4)] == "-."  # majority class
    zero_shot = next(
        e["mean"] for e in summary["cells"] if e["per_class"] == 0 and e["metric"] == "accuracy"
    )
    assert horizontal[round(zero_shot, 4)] == ":"
    assert [t.get_text() for t in bottom.get_xticklabels()] == [
        "0\n(zero-shot)",
        "1",
        "2",
        "4",
        "8",
        "all\n(full split)",
    ]
    assert any(np.allclose(line.get_ydata(), 0) for line in bottom.lines)  # zero line
    assert {c.get_label() for c in bottom.containers} >= {"lora", "vpt"}
    lora_curve = next(c for c in bottom.containers if c.get_label() == "lora")
    x, y = lora_curve.lines[0].get_data()
    assert len(x) == 4  # k = 1..8; `all` is a separate marker, not joined across the break
    expected = [
        e["diff"]
        for e in summary["paired"]
        if e["method"] == "lora" and e["metric"] == "accuracy" and e["per_class"] != "all"
    ]
    assert np.allclose(y, expected)
    # The same method has the same colour in every figure.
    params_axes = figures["accuracy_vs_params.png"].axes[0]
    lora_points = [c for c in params_axes.containers if c.get_label() == "lora"]
    lora_diff = [c for c in bottom.containers if c.get_label() == "lora"]
    assert np.allclose(lora_points[0].lines[0].get_color(), lora_diff[0].lines[0].get_color())
    assert "macro_f1_vs_k.png" in figures


def test_protocol_block(study):
    text = study[2].read_text()
    block = _section(text, "## Protocol")
    assert "not crossed" in block and "confounded" in block
    assert "nested across k" in block and ": yes." in block
    rows = _table_rows(block)
    assert [row[0] for row in rows] == ["1", "2", "4", "8", "all"]
    k1 = rows[0]
    assert k1[2] == "8" and k1[3] == "96" and k1[4] == "12.00"  # 96 validation / 8 training
    assert k1[5] == "fixed (12 per class)"  # from config.yaml: metrics.json has no selection
    assert "3 pair(s)" in k1[8]


def test_protocol_reads_selection_and_crossed_seeds(tmp_path):
    rows = make_fake_study(
        tmp_path, seeds=(0, 1), ks=(2, 8), methods=("linear", "lora"), zero_shot=False, full=False
    )
    crossed = []
    for row in rows:  # relabel as 2 data seeds x 2 training seeds (the run folders stay)
        for train_seed in (0, 1):
            crossed.append(
                {**row, "train_seed": train_seed, "seed": f"{row['data_seed']}{train_seed}"}
            )
        metrics_path = tmp_path / row["run_dir"] / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        tied = min(row["per_class"], 4)
        metrics["selection"] = {
            "mode": "k_tied",
            "images_per_class": tied,
            "images": 8 * tied,
            "best_step": row["best_step"],
            "evaluations": 5,
        }
        metrics["test_evaluations"] = 1
        metrics_path.write_text(json.dumps(metrics))
    write_results(tmp_path / "results.csv", crossed)
    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    block = _section(text, "## Protocol")
    assert "crossed: 2 data seeds" in block
    assert "Test evaluations per cell: 1." in block
    rows = _table_rows(block)
    assert [row[5] for row in rows] == ["k_tied (2 per class)", "k_tied (4 per class)"]
    assert [row[3] for row in rows] == ["16", "32"]  # validation images from the record
    assert [row[4] for row in rows] == ["1.00", "0.50"]  # validation / training images
    # Crossed seeds: the spread of each cell is split into data, training and residual parts.
    split = _table_rows(_section(text, "## Where the seed spread comes from"))
    assert len(split) == 2 * 2 and all(len(row) == 6 for row in split)
    # The two training seeds of a data seed reuse one run folder here: no training variance.
    assert all(row[3].startswith("0.0 (0%)") for row in split)


def test_one_seed_withholds_p_values_and_marks_intervals(tmp_path):
    make_fake_study(tmp_path, seeds=(0,), missing_metrics=("runs/lora_kall_s0",))
    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    cannot = _section(text, "## What this study cannot say")
    assert "1 seed: the seed-to-seed spread is unknown" in cannot
    assert "test-image noise only" in cannot
    table = _table_rows(_section(text, "## Test accuracy per cell"))
    no_files = [row for row in table if row[:2] == ["lora", "all"]]  # no run folder at all
    assert [row[4] for row in no_files] == ["n/a"]
    assert all(
        row[4].endswith("†") and row[5] == "n/a (1 seed)" for row in table if row not in no_files
    )
    paired = _table_rows(_section(text, "## Paired differences vs `linear` (test accuracy)"))
    assert paired and all(row[5] == row[6] == row[7] == "n/a: 1 pair(s)" for row in paired)
    assert all(row[4].endswith("†") for row in paired)  # test-image noise only
    assert all(row[9].startswith("n/a: 1 pair") for row in paired)  # no t-test either
    assert "runs/lora_kall_s0/metrics.json is missing" in _section(text, "## Problems found")


def test_cell_without_predictions_has_no_interval(tmp_path):
    make_fake_study(
        tmp_path, seeds=(0, 1, 2), ks=(2, 8), methods=("linear", "vpt"), zero_shot=False, full=False
    )
    for seed in (0, 1, 2):
        (tmp_path / f"runs/vpt_k8_s{seed}/predictions_test.csv").unlink()
    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    table = _table_rows(_section(text, "## Test accuracy per cell"))
    vpt8 = next(row for row in table if row[:2] == ["vpt", "8"])
    assert vpt8[4] == "n/a" and vpt8[3] != "n/a"  # mean from results.csv, no interval
    assert "No predictions_test.csv" in _section(text, "## What this study cannot say")
    assert "vpt_k8_s0/predictions_test.csv is missing" in text


def test_rows_ignored_or_corrected_are_listed(tmp_path):
    rows = make_fake_study(
        tmp_path,
        seeds=(0, 1, 2),
        ks=(2, 8),
        methods=("linear", "lora"),
        zero_shot=False,
        full=False,
    )
    truth = rows[4]["test_accuracy"]
    rows[4]["test_accuracy"] = 0.999
    rows[5]["status"] = "failed"
    rows[5]["error"] = "non-finite loss at step 3"
    write_results(tmp_path / "results.csv", rows, list(rows[0]) + ["status", "error"])
    with open(tmp_path / "results.csv", "a") as stream:
        stream.write("lora,8,7,7,7,0.5")  # a row cut short by a copy
    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    section = _section(text, "## Rows ignored or corrected")
    assert "results.csv line 6 (linear k=8 seed=1): test_accuracy: 0.999 here but" in section
    assert "metrics.json value used" in section
    assert f"line {len(rows) + 2} (lora k=8 seed=7): truncated" in section
    failed = _table_rows(_section(text, "## Failed cells"))
    assert failed == [["linear k=8 seed=2", "7", "non-finite loss at step 3"]]
    summary = json.loads((tmp_path / "summary.json").read_text())
    linear8 = next(
        e
        for e in summary["cells"]
        if e["method"] == "linear" and e["per_class"] == 8 and e["metric"] == "accuracy"
    )
    assert linear8["n_seeds"] == 2  # the failed seed is left out
    assert np.isclose(linear8["mean"], np.mean([truth, rows[3]["test_accuracy"]]))


def test_missing_or_empty_results_raise(tmp_path):
    with pytest.raises(EmoSetError, match="results.csv"):
        report_module.write_report(tmp_path)
    (tmp_path / "results.csv").write_text("method,per_class,seed,test_accuracy\n")
    with pytest.raises(EmoSetError, match="results.csv"):
        report_module.write_report(tmp_path)


def test_cli_prints_report_path_and_rejects_unknown_baseline(tmp_path, capsys):
    make_fake_study(
        tmp_path, seeds=(0, 1), ks=(2, 8), methods=("linear", "lora"), zero_shot=False, full=False
    )
    assert main(["report", str(tmp_path), "--baseline", "lora", "--bootstrap", "200"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")
    assert "## Paired differences vs `lora`" in (tmp_path / "report.md").read_text()
    assert main(["report", str(tmp_path), "--baseline", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_curve_sections_match_summary(study):
    _, _, path, summary = study
    text = path.read_text()
    aulc = summary["aulc"]["accuracy"]
    assert aulc["ks_used"] == [1, 2, 4, 8]
    section = _section(text, "## Area under the learning curve")
    tables = [table for table in section.split("\n\n") if table.startswith("| ")]
    methods_table, pairs_table = _table_rows(tables[0]), _table_rows(tables[1])
    for row in methods_table:
        entry = aulc["methods"][row[0]]
        assert row[1] == _pct(entry["aulc"])
        assert row[2] == f"[{_pct(entry['ci_low'])}, {_pct(entry['ci_high'])}]"
        # Independent: the trapezoid area over log2 k of the seed-mean curve, / log2 range.
        means = [
            e["mean"]
            for e in summary["cells"]
            if e["method"] == row[0]
            and e["metric"] == "accuracy"
            and e["per_class"] in (1, 2, 4, 8)
        ]
        assert entry["aulc"] == pytest.approx(np.trapezoid(means, np.log2([1, 2, 4, 8])) / 3)
    assert [row[0] for row in pairs_table] == ["linear - lora", "linear - vpt", "lora - vpt"]
    assert all(row[4] == "n/a: fewer than 5 seeds" for row in pairs_table)  # 3 seeds each

    efficiency = _table_rows(_section(text, "## Data efficiency"))
    part = summary["efficiency"]["accuracy"]
    assert [row[1] for row in efficiency] == [
        part["methods"][m]["k_needed"]["text"] for m in ("linear", "lora", "vpt")
    ]
    assert f"{_pct(part['target'])}%" in _section(text, "## Data efficiency")

    fits = _table_rows(_section(text, "## Scaling fits"))
    assert [row[0] for row in fits] == ["linear", "lora", "vpt"]  # 4 k x 3 seeds: fitted
    for row in fits:
        fit = summary["fits"]["accuracy"]["methods"][row[0]]
        assert row[1].startswith(f"{fit['free_c']['b']:.2f} [")
        assert row[4].startswith(f"k = 8: {fit['extrapolation']['free_c']['error_pp']:+.1f} pp")

    calibration = _table_rows(_section(text, "## Calibration"))
    assert len(calibration) == len(summary["calibration"])
    for row, entry in zip(calibration, summary["calibration"]):
        assert row[2].startswith(f"{entry['nll']:.3f}") and row[3].startswith(_pct(entry["ece"]))
    assert "![reliability diagram](calibration.png)" in text

    slices = _table_rows(_section(text, "## Accuracy by image attribute"))
    assert slices and all((row[7] == "small") == (int(row[4]) < 30) for row in slices)
    for row in slices:
        low, high = (float(v) / 100 for v in row[6].strip("[]").split(", "))
        assert 0 <= low <= float(row[5]) / 100 <= high <= 1


def test_two_seeds_two_k_withhold_fits_and_p_values(tmp_path):
    make_fake_study(
        tmp_path, seeds=(0, 1), ks=(2, 8), methods=("linear", "lora"), zero_shot=False, full=False
    )
    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    cannot = _section(text, "## What this study cannot say")
    assert "2 seeds" in cannot and "no scaling fit" in cannot.lower()
    fits = _table_rows(_section(text, "## Scaling fits"))
    assert all(row[1] == "no fit" and "2 distinct k" in row[6] for row in fits)
    cells = _table_rows(_section(text, "## Test accuracy per cell"))
    assert all(row[4].endswith("†") for row in cells)
    for low, high in (row[4].rstrip(" †").strip("[]").split(", ") for row in cells):
        assert 0 <= float(low) <= float(high) <= 100  # never outside [0, 100]%
    paired = _table_rows(_section(text, "## Paired differences vs `linear` (test accuracy)"))
    assert all(row[5] == row[6] == row[7] == "n/a: 2 pair(s)" for row in paired)
    assert all(row[9].startswith("n/a: 2 pairs") for row in paired)  # no t-test either
    aulc = _section(text, "## Area under the learning curve")
    pairs = [row for row in _table_rows(aulc) if " - " in row[0]]
    assert pairs and all(row[3] == "n/a: 2 pair(s)" for row in pairs)


def test_study_without_prediction_files_still_reports(tmp_path):
    """An older study (no predictions_test.csv): means from results.csv, everything that needs
    the images said to be withheld, no crash."""
    rows = make_fake_study(
        tmp_path, seeds=(0, 1), ks=(2, 8), methods=("linear", "lora"), full=False, predictions=False
    )
    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    table = _table_rows(_section(text, "## Test accuracy per cell"))
    lora8 = next(row for row in table if row[:2] == ["lora", "8"])
    values = [r["test_accuracy"] for r in rows if r["method"] == "lora" and r["per_class"] == 8]
    assert lora8[3] == _pct(np.mean(values)) and lora8[4] == "n/a"
    assert "No cell has a readable predictions_test.csv" in _section(
        text, "## What this study cannot say"
    )
    assert "No comparison: no cell has a readable predictions_test.csv." in text
    assert (tmp_path / "accuracy_vs_k.png").is_file()


def test_slices_at_0_and_100_percent_are_drawn(tmp_path):
    """A Wilson bound at 0% or 100% may miss the value by a rounding error (1e-16); the error
    bars must still be drawn (matplotlib refuses negative lengths)."""
    rows = make_fake_study(tmp_path, seeds=(0,), ks=(2,), methods=("linear",), full=False)
    for row in rows:
        path = tmp_path / row["run_dir"] / "metrics.json"
        metrics = json.loads(path.read_text())
        for by_slice in metrics["test"]["slices"].values():
            for index, entry in enumerate(by_slice.values()):
                entry.update(n=48, accuracy=float(index % 2))  # 0% and 100% slices
        path.write_text(json.dumps(metrics))
    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    assert "![accuracy by attribute slice](attribute_slices.png)" in text
    assert (tmp_path / "attribute_slices.png").stat().st_size > 10_000
