"""report.md and figures of a fake scaling study: files, table numbers, plot contents, errors."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from emoset_peft.cli import main
from emoset_peft.engine.metrics import classification_metrics
from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS
from emoset_peft.study import report as report_module
from emoset_peft.study.stats import summarize, summarize_results

COLUMNS = ["method", "per_class", "seed", "data_seed", "test_accuracy", "test_macro_f1",
           "test_balanced_accuracy", "test_valence_accuracy", "val_accuracy",
           "trainable_params", "total_params", "train_images", "train_seconds", "steps",
           "run_dir"]
METHOD_PARAMS = {"linear": 6_152, "lora": 300_000, "vpt": 60_000, "zeroshot": 0}
NUM_TEST = 160  # test images per fake run


def _fake_test_set() -> tuple[np.ndarray, dict]:
    """Labels and attributes of one fake test split, the same for every run of a study."""
    rng = np.random.default_rng(123)
    labels = rng.integers(0, 8, NUM_TEST)
    attributes = {
        "facial_expression": [rng.choice(["happy", "sad"]) if rng.random() < 0.3 else None
                              for _ in range(NUM_TEST)],
        "brightness": [float(np.round(rng.random(), 1)) for _ in range(NUM_TEST)],
        "scene": [f"scene_{rng.integers(0, 8)}" for _ in range(NUM_TEST)],
        "human_action": [-1 if rng.random() < 0.5 else int(rng.integers(0, 5))
                         for _ in range(NUM_TEST)],
    }
    return labels, attributes


def _fake_test_metrics(rng: np.random.Generator, accuracy: float) -> dict:
    """classification_metrics of predictions that are right with probability ``accuracy``."""
    labels, attributes = _fake_test_set()
    right = rng.random(NUM_TEST) < accuracy
    preds = np.where(right, labels, (labels + rng.integers(1, 8, NUM_TEST)) % 8)
    probs = rng.random((NUM_TEST, 8)) * 0.1
    probs[np.arange(NUM_TEST), preds] = 1.0
    return classification_metrics(probs, labels, EMOTIONS, attributes)


def make_fake_study(directory, seeds=(0, 1, 2), ks=(1, 2, 4, 8), missing_metrics=()):
    """A study folder: 3 methods x ks x seeds, a zero-shot row per seed, `all` rows for two
    methods; accuracy follows 0.75 - 0.45 / k plus noise. Returns the rows written."""
    rng = np.random.default_rng(0)
    rows = []
    cells = [(m, k) for m in ("linear", "lora", "vpt") for k in ks]
    cells += [("zeroshot", 0), ("linear", "all"), ("lora", "all")]
    for method, k in cells:
        for seed in seeds:
            k_value = 600 if k == "all" else k
            shift = {"linear": 0.0, "lora": 0.06, "vpt": 0.03, "zeroshot": 0.0}[method]
            mean = 0.35 if k == 0 else 0.75 + shift - 0.45 / k_value
            accuracy = float(np.clip(mean + rng.normal(0, 0.02), 0.05, 0.99))
            run_dir = f"runs/{method}_k{k}_s{seed}"
            row = {
                "method": method, "per_class": k, "seed": seed, "data_seed": seed,
                "test_accuracy": accuracy, "test_macro_f1": accuracy - 0.02,
                "test_balanced_accuracy": accuracy - 0.01,
                "test_valence_accuracy": min(accuracy + 0.1, 1.0), "val_accuracy": accuracy,
                "trainable_params": METHOD_PARAMS[method], "total_params": 86_000_000,
                "train_images": 0 if k == 0 else 8 * (600 if k == "all" else k),
                "train_seconds": 1.5, "steps": 10, "run_dir": run_dir,
            }
            rows.append(row)
            if run_dir in missing_metrics:
                continue
            (directory / run_dir).mkdir(parents=True)
            metrics = {"test": _fake_test_metrics(rng, accuracy), "validation": {},
                       "trainable_params": row["trainable_params"],
                       "total_params": row["total_params"], "train_images": row["train_images"]}
            (directory / run_dir / "metrics.json").write_text(json.dumps(metrics))
    with open(directory / "results.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (directory / "study.yaml").write_text("methods: [linear, lora, vpt]\nper_class: [1, 2, 4, 8]\n")
    return rows


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else None]


def _table_rows(section: str) -> list[list[str]]:
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    directory = tmp_path_factory.mktemp("study")
    rows = make_fake_study(directory)
    path = report_module.write_report(directory)
    return directory, rows, path


def test_report_and_every_figure_exist(study):
    directory, _, path = study
    assert path == directory / "report.md"
    text = path.read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    expected = {"accuracy_vs_k.png", "macro_f1_vs_k.png", "accuracy_vs_params.png",
                "power_law.png", "attribute_slices.png", "confusion_linear.png",
                "confusion_lora.png", "confusion_vpt.png", "confusion_zeroshot.png"}
    assert expected <= set(figures)
    for name in figures:
        assert (directory / name).stat().st_size > 10_000, name  # a real 150-dpi image
        assert (directory / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "methods: [linear, lora, vpt]" in text  # the config is quoted


def test_accuracy_table_equals_summarize(study):
    directory, rows, path = study
    table = _table_rows(_section(path.read_text(), "## Test accuracy"))
    summary = summarize_results(rows, "test_accuracy")
    assert len(table) == len(summary) == 3 * 4 + 1 + 2
    for cells, entry in zip(table, summary):
        method, k, n, mean_std, ci = cells
        assert method == entry["method"]
        assert k.split()[0] == str(entry["per_class"])
        values = [r["test_accuracy"] for r in rows
                  if r["method"] == method and str(r["per_class"]) == k.split()[0]]
        expected = summarize(values)
        assert int(n) == expected["n"] == 3
        assert mean_std == f"{100 * expected['mean']:.2f} ± {100 * expected['std']:.2f}"
        assert ci == f"[{100 * expected['ci_low']:.2f}, {100 * expected['ci_high']:.2f}]"


def test_other_sections_have_numbers(study):
    text = study[2].read_text()
    paired = _table_rows(_section(text, "## Paired differences vs `linear`"))
    assert {row[0] for row in paired} == {"lora", "vpt"}
    assert len(paired) == 4 + 4 + 1  # lora and vpt at k = 1..8, lora at `all`
    fits = _table_rows(_section(text, "## Power-law fits"))
    assert [row[0] for row in fits] == ["linear", "lora", "vpt"]
    assert all(row[1] == "a*k^-b+c" for row in fits)
    efficiency = _table_rows(_section(text, "## Data efficiency"))
    assert [row[1] for row in efficiency] == ["all", "all", "k = 8"]
    assert all(row[4] != "not reached" for row in efficiency)


def test_accuracy_plot_has_a_line_and_band_per_method(study):
    directory, rows, _ = study
    figures = report_module.build_figures(report_module.load_study(directory))
    axes = figures["accuracy_vs_k.png"].axes[0]
    labelled = {line.get_label(): line for line in axes.lines}
    for method in ("linear", "lora", "vpt"):
        x, y = labelled[method].get_data()
        assert np.allclose(x, np.log2([1, 2, 4, 8]))
        expected = [e["mean"] for e in summarize_results(rows) if e["method"] == method
                    and e["per_class"] in (1, 2, 4, 8)]
        assert np.allclose(y, expected)
    bands = [c for c in axes.collections if c.__class__.__name__ == "FillBetweenPolyCollection"
             or c.__class__.__name__ == "PolyCollection"]
    assert len(bands) == 3  # one 95% band per trained method
    chance = [line for line in axes.lines if np.allclose(line.get_ydata(), 1 / 8)]
    assert chance and chance[0].get_linestyle() == "--"
    tick_labels = [t.get_text() for t in axes.get_xticklabels()]
    assert tick_labels == ["0\n(zero-shot)", "1", "2", "4", "8", "all\n(full split)"]
    # The same method has the same colour in every figure.
    params_axes = figures["accuracy_vs_params.png"].axes[0]
    lora_colour = labelled["lora"].get_color()
    lora_points = [c for c in params_axes.containers if c.get_label() == "lora"]
    assert lora_points and np.allclose(lora_points[0].lines[0].get_color(), lora_colour)


def test_one_seed_and_missing_metrics_are_reported(tmp_path):
    make_fake_study(tmp_path, seeds=(0,), missing_metrics=("runs/lora_kall_s0", "runs/vpt_k8_s0"))
    text = report_module.write_report(tmp_path).read_text()
    problems = _section(text, "## Problems found")
    assert "runs/lora_kall_s0/metrics.json is missing" in problems
    assert "runs/vpt_k8_s0/metrics.json is missing" in problems
    assert "only one seed" in problems
    table = _table_rows(_section(text, "## Test accuracy"))
    assert all(row[4] == "n/a" for row in table)  # no interval from one seed
    fits = _table_rows(_section(text, "## Power-law fits"))
    assert all(row[4] == "n/a" for row in fits)  # no bootstrap over a single seed
    assert (tmp_path / "accuracy_vs_k.png").is_file()
    # Confusion matrices fall back to the largest k that has metrics.json.
    assert (tmp_path / "confusion_lora.png").is_file()
    assert (tmp_path / "confusion_vpt.png").is_file()


def test_missing_or_empty_results_raise(tmp_path):
    with pytest.raises(EmoSetError, match="results.csv"):
        report_module.write_report(tmp_path)
    (tmp_path / "results.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(EmoSetError, match="results.csv"):
        report_module.write_report(tmp_path)


def test_cli_prints_report_path_and_rejects_unknown_baseline(tmp_path, capsys):
    make_fake_study(tmp_path, seeds=(0, 1), ks=(2, 8))
    assert main(["report", str(tmp_path), "--baseline", "lora"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")
    assert "## Paired differences vs `lora`" in (tmp_path / "report.md").read_text()
    assert main(["report", str(tmp_path), "--baseline", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
