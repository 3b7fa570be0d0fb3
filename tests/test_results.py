"""results.csv validated on read (issue 11 item 7): real files broken the ways people break them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_study import COLUMNS, make_fake_study, write_results

from emoset_peft.errors import EmoSetError
from emoset_peft.study.results import read_result_rows, read_results_table
from emoset_peft.study.runner import read_results

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    rows = make_fake_study(
        tmp_path,
        seeds=(0, 1),
        ks=(2, 8),
        methods=("linear", "lora"),
        zero_shot=False,
        full=False,
        predictions=False,
    )
    return tmp_path, rows


def _lines(directory: Path) -> list[str]:
    return (directory / "results.csv").read_text().splitlines(keepends=True)


def _notes(table) -> list[str]:
    return [note.text() for note in table.notes]


def test_intact_file_has_no_notes(study):
    directory, rows = study
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == len(rows) == 8 and not table.notes and not table.problems
    assert table.rows[0]["per_class"] == 2 and isinstance(table.rows[0]["test_accuracy"], float)
    assert len(read_results(directory / "results.csv")) == 8


def test_truncated_last_row_is_ignored_and_named(study):
    directory, rows = study
    data = (directory / "results.csv").read_bytes()
    (directory / "results.csv").write_bytes(data[: len(data) - 40])  # cut inside the last row
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 7
    last = rows[-1]
    (note,) = table.notes
    assert note.line == 9 and note.action == "row ignored" and "truncated" in note.reason
    assert note.cell == f"lora k=8 seed={last['seed']}"
    # The runner resumes from the whole rows only: the cut cell is trained again.
    assert len(read_results(directory / "results.csv")) == 7


def test_last_row_cut_inside_its_last_value_is_ignored(study):
    directory, _ = study
    text = (directory / "results.csv").read_text().rstrip("\r\n")
    (directory / "results.csv").write_text(text[:-2])  # run_dir "runs/lora_k8_s1" -> "..._"
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 7
    assert "without a line end" in table.notes[0].reason
    assert len(read_results(directory / "results.csv")) == 8  # runner: no study folder check


def test_non_utf8_row_is_ignored_and_garbage_file_is_one_error(study, tmp_path):
    directory, _ = study
    lines = _lines(directory)
    broken = lines[3].replace("linear", "lin\udcffear")
    data = (
        "".join(lines[:3]).encode()
        + broken.encode("utf-8", "surrogateescape")
        + "".join(lines[4:]).encode()
    )
    (directory / "results.csv").write_bytes(data)
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 7
    assert table.notes[0].line == 4 and "not UTF-8" in table.notes[0].reason
    assert len(read_results(directory / "results.csv")) == 7

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "results.csv").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(EmoSetError, match="results.csv is not a") as info:
        read_results_table(garbage / "results.csv", garbage)
    assert "\n" not in str(info.value) and "move it away" in str(info.value)
    with pytest.raises(EmoSetError, match="results.csv is not a"):
        read_results(garbage / "results.csv")  # the runner stops instead of overwriting it
    # The CLI: one line on stderr, exit status 2, no traceback.
    done = subprocess.run(
        [sys.executable, "-m", "emoset_peft", "report", str(garbage)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "results.csv is not a" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # Whatever the bytes (here: 200 random files, some with a short text-like first line),
    # one single-line EmoSetError, never another exception.
    rng = np.random.default_rng(1)
    for _ in range(200):
        (garbage / "results.csv").write_bytes(rng.bytes(int(rng.integers(1, 3000))))
        with pytest.raises(EmoSetError, match="results.csv is not a") as info:
            read_results_table(garbage / "results.csv", garbage)
        assert "\n" not in str(info.value)


def test_missing_header_is_one_error_naming_the_fix(study):
    directory, _ = study
    (directory / "results.csv").write_text("".join(_lines(directory)[1:]))
    with pytest.raises(EmoSetError, match=r"has no header line .*put the column names back"):
        read_results_table(directory / "results.csv", directory)
    with pytest.raises(EmoSetError, match="has no header line"):
        read_result_rows(directory / "results.csv")


def test_text_in_numeric_columns(study):
    directory, rows = study
    rows[0]["test_macro_f1"] = "abc"  # metrics.json has the value: corrected
    rows[1]["trainable_params"] = "abc"  # not in metrics.json: left out
    rows[2]["test_accuracy"] = "85.3"  # percent instead of a fraction: corrected
    write_results(directory / "results.csv", rows)
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 8
    by_line = {(note.line, note.column): note for note in table.notes}
    assert "'abc' is not a number" in by_line[(2, "test_macro_f1")].reason
    assert by_line[(2, "test_macro_f1")].action == "metrics.json value used"
    assert (
        table.rows[0]["test_macro_f1"]
        == json.loads((directory / rows[0]["run_dir"] / "metrics.json").read_text())["test"][
            "macro_f1"
        ]
    )
    assert by_line[(3, "trainable_params")].action == "value left out"
    assert table.rows[1]["trainable_params"] is None
    assert "outside [0, 1]" in by_line[(4, "test_accuracy")].reason
    assert table.rows[2]["test_accuracy"] == pytest.approx(
        json.loads((directory / rows[2]["run_dir"] / "metrics.json").read_text())["test"][
            "accuracy"
        ]
    )

    # Without metrics.json a row with no usable accuracy cannot be used at all.
    (directory / rows[0]["run_dir"] / "metrics.json").unlink()
    rows[0]["test_accuracy"] = "abc"
    write_results(directory / "results.csv", rows)
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 7
    assert any(
        n.line == 2 and n.action == "row ignored" and n.column == "test_accuracy"
        for n in table.notes
    )
    assert any("metrics.json is missing" in p for p in table.problems)


def test_edited_accuracy_is_corrected_from_metrics_json(study):
    directory, rows = study
    truth = rows[5]["test_accuracy"]
    rows[5]["test_accuracy"] = 0.99
    write_results(directory / "results.csv", rows)
    table = read_results_table(directory / "results.csv", directory)
    (note,) = table.notes
    assert (note.line, note.column, note.action) == (7, "test_accuracy", "metrics.json value used")
    assert "0.99 here but" in note.reason and rows[5]["run_dir"] in note.reason
    assert table.rows[5]["test_accuracy"] == truth
    assert "results.csv line 7 (lora k=2 seed=1): test_accuracy: 0.99 here" in note.text()


def test_failed_rows_are_listed_not_counted(study):
    directory, rows = study
    for row in rows:
        row["status"] = "ok"
        row["error"] = ""
    rows[3].update(
        status="failed", error="non-finite loss at step 4: lower train.lr", test_accuracy=""
    )
    rows[4]["status"] = "bogus"
    write_results(directory / "results.csv", rows, COLUMNS + ["status", "error"])
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 6
    (failed,) = table.failed
    assert failed.line == 5 and failed.cell == "linear k=8 seed=1"
    assert failed.error.startswith("non-finite loss")
    assert any(n.line == 6 and "unknown status 'bogus'" in n.reason for n in table.notes)
    assert len(read_results(directory / "results.csv")) == 8  # runner sees failed rows too


def test_repeated_cell_keeps_the_later_row_and_names_the_earlier(study):
    directory, rows = study
    rows.append(dict(rows[0]))
    write_results(directory / "results.csv", rows)
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 8
    (note,) = table.notes
    assert note.line == 2 and "again on line 10" in note.reason


def test_extra_fields_and_bad_per_class(study):
    directory, _ = study
    lines = _lines(directory)
    lines[2] = lines[2].rstrip("\r\n") + ",surplus\r\n"
    lines[3] = "linear,two," + lines[3].split(",", 2)[2]
    (directory / "results.csv").write_text("".join(lines))
    table = read_results_table(directory / "results.csv", directory)
    assert len(table.rows) == 6
    assert "fields but the header has" in table.notes[0].reason
    assert table.notes[1].column == "per_class" and "'two'" in table.notes[1].reason
