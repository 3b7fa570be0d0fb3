"""``benchmarks/gpu_check.sh`` works: its CPU dry run (tiny ViT, tiny tree) runs every step (the
gpu tests, bench_train_eval, the study benchmark) in real processes and prints the one table."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu_prints_one_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "EMOSET_PEFT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu",
                           "--tiny", "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=900, cwd=ROOT,
                          check=False)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    table = out[out.index("# gpu_check:"):]
    for row in ("gpu tests (tests/test_gpu.py)", "training images/s (tiny ViT",
                "evaluation images/s (tiny ViT", "precision (toolkit / plain)", "peak for MFU",
                "study wall s (1 cells"):
        assert row in table, row
    assert "gpu_check: all steps ok" in table
    for name in ("gpu_tests", "train_eval", "study"):
        assert (tmp_path / "work" / f"{name}.status").read_text().strip() == "0"
    import torch

    tests_row = next(line for line in table.splitlines() if "gpu tests" in line)
    assert "0 failed" in tests_row
    if not torch.cuda.is_available():  # every gpu test skips here, with its reason
        assert "0 passed" in tests_row and "7 skipped" in tests_row


def test_gpu_check_rejects_an_unknown_option():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "unknown option --fast" in done.stderr
