"""How `emoset-peft report` writes its files: all of them or none, and a failed write is one line."""

from __future__ import annotations

from fixtures_study import make_fake_study
from full_disk import run_cli_with_file_limit

from emoset_peft.study import report as report_module


def _files(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def test_a_full_disk_is_one_line_and_leaves_the_previous_report_whole(tmp_path):
    make_fake_study(tmp_path, seeds=(0, 1), ks=(1, 4), methods=("linear", "lora"))
    report_module.write_report(tmp_path, n_boot=100)
    before = _files(tmp_path)
    assert any(name.endswith(".png") for name in before) and "summary.json" in before
    # Another bootstrap seed: every file of the new report would differ from the old one.
    result = run_cli_with_file_limit(
        ["report", tmp_path, "--bootstrap", "100", "--seed", "1"], max_bytes=16 * 1024
    )
    err = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in err and "Traceback" not in err, err
    assert f"cannot write {tmp_path}/" in err and ".png" in err and "File too large" in err
    assert "previous one are intact" in err and "free space" in err
    assert _files(tmp_path) == before  # no file changed, none half-written, no temp file left
