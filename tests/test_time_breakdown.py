"""Where a study's time goes: per-cell seconds by part in results.csv and metrics.json, the
report's stacked-bar figure, and older results.csv files (eval_seconds) that still read."""

import csv
import json
import math

import yaml
from fixtures_study import COLUMNS, make_fake_study, write_results

from emoset_peft.cli import main
from emoset_peft.engine.loop_state import LoopState
from emoset_peft.study import report as report_module
from emoset_peft.study.result_rows import TIME_COLUMNS, TIME_PARTS
from emoset_peft.study.results import read_results_table
from emoset_peft.study.runner import RESULT_COLUMNS, append_result, read_results


def test_cells_record_where_the_time_goes(training_root, tiny_vit_dir, tmp_path):
    recipe = {
        "output_dir": str(tmp_path / "study"),
        "base": {
            "data": {"root": str(training_root), "selection_per_class": 4},
            "model": {"backbone": str(tiny_vit_dir), "options": {"r": 4}},
            "train": {"batch_size": 8, "min_steps": 4, "max_steps": 4, "eval_every": 2},
        },
        "methods": {"lora": {}},
        "per_class": [2, 4],
        "seeds": [0],
        "report": True,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["study", "--config", str(path), "--no-progress"]) == 0
    study = tmp_path / "study"
    rows = read_results(study / "results.csv")
    assert len(rows) == 2
    assert set(TIME_COLUMNS) <= set(RESULT_COLUMNS) and "eval_seconds" not in RESULT_COLUMNS
    for row in rows:
        seconds = {column: float(row[column]) for column in TIME_COLUMNS}
        assert all(value >= 0 for value in seconds.values()), seconds
        # two selection evaluations (steps 2 and 4), the test split once, 4 optimizer steps
        assert seconds["train_seconds"] > 0 and seconds["test_eval_seconds"] > 0
        assert seconds["selection_eval_seconds"] > 0
        assert seconds["feature_seconds"] == 0  # lora trains inside the backbone: no features
        assert sum(seconds.values()) <= float(row["cell_seconds"])
        metrics = json.loads((study / row["run_dir"] / "metrics.json").read_text())
        assert {TIME_PARTS[c]: v for c, v in seconds.items()} == metrics["seconds"]
        assert metrics["train_seconds"] == seconds["train_seconds"]
    assert (study / "time_breakdown.png").stat().st_size > 0
    text = (study / "report.md").read_text()
    assert "## Where the time goes" in text and "](time_breakdown.png)" in text


def test_an_older_results_csv_with_eval_seconds_still_reads_and_reports(tmp_path):
    rows = make_fake_study(tmp_path, seeds=(0, 1), ks=(1, 2), methods=("linear", "lora"))
    for index, row in enumerate(rows):
        row["eval_seconds"] = 0.5 + index  # the column before test_eval_seconds existed
        row["cell_seconds"] = 10.0 + index
    path = tmp_path / "results.csv"
    write_results(path, rows, [*COLUMNS, "eval_seconds", "cell_seconds"])

    table = read_results_table(path, tmp_path)
    assert not table.notes and len(table.rows) == len(rows)
    assert "test_eval_seconds" in table.columns and "eval_seconds" not in table.columns
    assert [r["test_eval_seconds"] for r in table.rows] == [0.5 + i for i in range(len(rows))]
    assert all(math.isnan(r.get("decode_seconds", math.nan)) for r in table.rows)

    text = report_module.write_report(tmp_path, n_boot=200).read_text()
    assert "## Where the time goes" in text and "Not recorded by these rows" in text
    assert (tmp_path / "time_breakdown.png").exists()

    # A cell appended by this version keeps the old rows' value under the new name.
    append_result(path, {"method": "lora", "per_class": 4, "seed": 0, "test_accuracy": 0.5})
    with open(path, newline="") as stream:
        written = list(csv.DictReader(stream))
    assert [float(r["test_eval_seconds"]) for r in written[:-1]] == [
        0.5 + i for i in range(len(rows))
    ]
    assert "eval_seconds" not in written[0]


def test_a_checkpoint_from_before_selection_seconds_resumes():
    saved = json.loads(LoopState(step=4, train_seconds=2.5).to_json())
    del saved["selection_seconds"]  # trainer_state.json as an earlier version wrote it
    state = LoopState.from_json(json.dumps(saved))
    assert state.step == 4 and state.train_seconds == 2.5 and state.selection_seconds == 0.0
