"""The metric registry: values against scikit-learn, the evaluate modules offline, and a new
entry reaching metrics.json, log.jsonl, results.csv and the select_metric choices by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    top_k_accuracy_score,
)

from emoset_peft.labels import EMOTIONS, valence_of
from emoset_peft.metrics import METRICS, get, log_entry, prefixed, selection_score
from emoset_peft.study.calibration import expected_calibration_error

ROOT = Path(__file__).resolve().parents[1]


def _case(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(8), size=n)
    probs[:, 5] = 0.0  # a class never predicted: sklearn's zero_division conventions matter
    return probs / probs.sum(axis=1, keepdims=True), rng.integers(0, 8, n)


def _ece_by_loop(probs, labels, bins=15):
    """ECE written out bin by bin, independent of the vectorised one."""
    confidence, preds = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        inside = (confidence > low) & (confidence <= high) if index else confidence <= high
        if inside.any():
            gap = (preds[inside] == labels[inside]).mean() - confidence[inside].mean()
            total += inside.sum() / len(labels) * abs(gap)
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_registry_values_match_sklearn(seed):
    probs, labels = _case(seed)
    preds = probs.argmax(axis=1)
    valence = np.array([valence_of(name) for name in EMOTIONS])
    expected = {
        "accuracy": accuracy_score(labels, preds),
        "macro_f1": f1_score(labels, preds, average="macro", zero_division=0),
        "balanced_accuracy": balanced_accuracy_score(labels, preds),
        "valence_accuracy": accuracy_score(valence[labels], valence[preds]),
        "top2_accuracy": top_k_accuracy_score(labels, probs, k=2, labels=range(8)),
        "ece": _ece_by_loop(probs, labels),
    }
    assert set(expected) <= set(METRICS)
    for name, value in expected.items():
        result = get(name).compute(probs, labels, EMOTIONS)
        assert isinstance(result, float) and result == pytest.approx(value), name
    # The study's calibration table and metrics.json share one ECE.
    assert get("ece").compute(probs, labels, EMOTIONS) == float(
        expected_calibration_error(probs, labels)
    )


def test_empty_split_gives_zeros_not_nan():
    probs, labels = np.zeros((0, 8)), np.zeros(0, dtype=np.int64)
    assert all(metric.compute(probs, labels, EMOTIONS) == 0.0 for metric in METRICS.values())


def test_selection_log_and_row_follow_the_registry():
    metrics = {
        "loss": 1.5,
        "accuracy": 0.5,
        "macro_f1": 0.4,
        "balanced_accuracy": 0.45,
        "valence_accuracy": 0.7,
        "top2_accuracy": 0.8,
        "ece": 0.1,
    }
    assert selection_score(metrics, "accuracy") == 0.5
    assert selection_score(metrics, "ece") == -0.1  # lower is better: the score is negated
    assert selection_score(metrics, "loss") == -1.5
    assert log_entry(metrics)["val_ece"] == 0.1 and log_entry(metrics)["val_loss"] == 1.5
    assert prefixed(metrics, "test") == {f"test_{name}": metrics[name] for name in METRICS}


def test_every_entry_ships_its_evaluate_module():
    for name, metric in METRICS.items():
        assert f'METRIC = "{name}"' in metric.module_path().read_text(), name


@pytest.mark.slow  # importing evaluate takes ~6 s of CPU
def test_evaluate_modules_load_offline_and_equal_the_registry(tmp_path):
    probs, labels = _case(3, n=120)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "labels.npy", labels)
    script = textwrap.dedent("""
        import json, sys
        import evaluate, numpy as np
        from emoset_peft.metrics import METRICS, module_path
        probs, labels = np.load(sys.argv[1]), np.load(sys.argv[2])
        out = {}
        for name in METRICS:
            module = evaluate.load(str(module_path(name)))  # the script file
            out[name] = module.compute(predictions=probs, references=labels)[name]
        folder = evaluate.load(str(module_path("macro_f1").parent))  # its folder
        folder.add_batch(predictions=probs[:50], references=labels[:50])
        folder.add_batch(predictions=probs[50:], references=labels[50:])
        out["macro_f1_batches"] = folder.compute()["macro_f1"]
        print(json.dumps(out))
    """)
    env = {
        **os.environ,
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-c",
        script,
        str(tmp_path / "probs.npy"),
        str(tmp_path / "labels.npy"),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    values = json.loads(done.stdout.strip().splitlines()[-1])
    for name, metric in METRICS.items():
        assert values[name] == metric.compute(probs, labels, list(EMOTIONS)), name
    assert values["macro_f1_batches"] == values["macro_f1"]


EXTRA_ENTRY = """
import csv, json, sys
from pathlib import Path
from emoset_peft.metrics import Metric, register

# The one entry a new metric needs (here registered before the toolkit's modules are imported,
# as an entry in metrics/registry.py would be).
register(Metric("error_rate", lambda probs, labels, names: float(
    (probs.argmax(axis=1) != labels).mean()) if len(labels) else 0.0, False, "error rate",
    "Share of images whose top emotion is wrong."))

from emoset_peft.cli import main
from emoset_peft.config import CHOICES
from emoset_peft.study.runner import RESULT_COLUMNS, append_result, read_results

assert "error_rate" in CHOICES["train.select_metric"]
assert main(["train", *sys.argv[2:], "train.select_metric=error_rate"]) == 0
run = Path(sys.argv[1])
metrics = json.loads((run / "metrics.json").read_text())
log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
log = [entry for entry in log if "val_loss" in entry]  # the evaluations
# An old results.csv (today's columns without the new one) takes the new row and still reads.
old = [c for c in RESULT_COLUMNS if c != "test_error_rate"]
results = run.parent / "results.csv"
with open(results, "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=old)
    writer.writeheader()
    writer.writerow({c: "" for c in old} | {"method": "old", "test_accuracy": "0.5"})
from emoset_peft.metrics import prefixed
append_result(results, {"method": "new", **prefixed(metrics["test"], "test")})
rows = read_results(results)
print(json.dumps({"test": metrics["test"]["error_rate"], "accuracy": metrics["test"]["accuracy"],
                  "validation": metrics["validation"]["error_rate"],
                  "best_step": metrics["best_step"], "log": log,
                  "columns": list(RESULT_COLUMNS), "rows": rows}))
"""


@pytest.mark.slow  # one tiny training run in a fresh process
def test_a_new_registry_entry_reaches_every_output(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", EXTRA_ENTRY, str(tmp_path / "run"), *tiny_run("run")]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["test"] == pytest.approx(1 - out["accuracy"])  # metrics.json
    assert all("val_error_rate" in entry for entry in out["log"])  # log.jsonl
    # Lower is better: selection picked the first evaluation with the lowest error rate.
    best = min(out["log"], key=lambda entry: entry["val_error_rate"])
    assert out["best_step"] == best["step"]
    assert out["validation"] == best["val_error_rate"]
    columns = out["columns"]  # results.csv: after the toolkit's metrics, before val_accuracy
    assert columns.index("test_error_rate") == columns.index("val_accuracy") - 1
    assert [row["method"] for row in out["rows"]] == ["old", "new"]
    assert out["rows"][0]["test_error_rate"] == "" and out["rows"][0]["test_accuracy"] == "0.5"
    assert float(out["rows"][1]["test_error_rate"]) == pytest.approx(out["test"])


def _other_metrics_table(text: str) -> list[list[str]]:
    start = text.index("## Other test metrics")
    end = text.find("\n## ", start + 1)
    lines = [line for line in text[start:end].splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_report_tables_follow_the_registry(tmp_path, monkeypatch):
    """A registry entry outside the bootstrap's metrics gets a report column by itself; an
    older results.csv without the column reads, its values coming from metrics.json."""
    from fixtures_study import COLUMNS, make_fake_study, write_results

    from emoset_peft.metrics import Metric, registry
    from emoset_peft.study import report, summary

    monkeypatch.setitem(
        registry.METRICS,
        "error_rate",
        Metric(
            "error_rate",
            lambda probs, labels, names: 1 - get("accuracy").compute(probs, labels, names),
            False,
            "error rate",
            "Share of wrong top emotions.",
        ),
    )
    rows = make_fake_study(
        tmp_path, seeds=(0, 1), ks=(2, 8), methods=("linear", "lora"), zero_shot=False, full=False
    )
    for row in rows:
        row["test_error_rate"] = 1 - row["test_accuracy"]
    write_results(tmp_path / "results.csv", rows, [*COLUMNS, "test_error_rate"])
    report.write_report(tmp_path, n_boot=20)
    table = _other_metrics_table((tmp_path / "report.md").read_text())
    header = table[0]
    assert "error rate (%, ↓)" in header and "ECE (%, ↓)" in header
    assert "top-2 accuracy (%, ↑)" in header and "test accuracy" not in " ".join(header)
    assert [name for name in registry.METRICS if name not in summary.METRICS] == [
        "balanced_accuracy",
        "valence_accuracy",
        "top2_accuracy",
        "ece",
        "error_rate",
    ]
    by_cell = {(r[0], r[1]): r for r in table[2:]}
    cell = [row for row in rows if (row["method"], row["per_class"]) == ("lora", 8)]
    error = np.array([row["test_error_rate"] for row in cell])
    shown = by_cell[("lora", "8")][header.index("error rate (%, ↓)")]
    assert shown == f"{100 * error.mean():.1f} ± {100 * error.std(ddof=1):.1f}"
    # ECE is not a results.csv column of this (older) study: filled in from metrics.json.
    eces = [
        json.loads((tmp_path / row["run_dir"] / "metrics.json").read_text())["test"]["ece"]
        for row in cell
    ]
    assert by_cell[("lora", "8")][header.index("ECE (%, ↓)")].startswith(
        f"{100 * np.mean(eces):.1f} ± "
    )
