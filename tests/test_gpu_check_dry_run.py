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
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "EMOSET_PEFT_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--tiny",
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    table = out[out.index("# gpu_check:") :]
    for row in (
        "gpu tests (tests/test_gpu.py)",
        "training images/s (tiny ViT",
        "evaluation images/s (tiny ViT",
        "precision (toolkit / plain)",
        "peak for MFU",
        "study wall s (1 cells",
    ):
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
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "unknown option --fast" in done.stderr


def test_mfu_peak_is_the_datasheet_bf16_figure_for_known_gpus_else_measured():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _mfu import mfu, peak_gflops

    assert peak_gflops("NVIDIA H200", 1.0)[0] == 989e3
    assert peak_gflops("NVIDIA H100 80GB HBM3", 1.0)[0] == 989e3
    assert peak_gflops("NVIDIA H100 PCIe", 1.0)[0] == 756e3
    assert peak_gflops("NVIDIA A100-SXM4-80GB", 1.0)[0] == 312e3
    assert peak_gflops("NVIDIA L4", 1.0)[0] == 121e3
    peak, source = peak_gflops("NVIDIA GeForce RTX 3090", 71e3)
    assert peak == 71e3 and "measured" in source
    assert peak_gflops(None, 3844.0) == (
        3844.0,
        ("this CPU: best GEMM measured in this run, 3844 GFLOP/s"),
    )
    assert abs(mfu(100.0, 19.13e9, 3844.0) - 0.4977) < 1e-3  # 1.913 TFLOP/s of 3.844


def test_gpu_check_table_marks_a_failed_step_and_exits_1(tmp_path):
    (tmp_path / "gpu_tests.status").write_text("0\n")
    (tmp_path / "gpu_tests.xml").write_text(
        '<testsuites><testsuite tests="7" failures="1" errors="0" skipped="0"/></testsuites>'
    )
    (tmp_path / "train_eval.status").write_text("124\n")  # timed out: no JSON left behind
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "_gpu_table.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "6 passed" in done.stdout and "1 failed, 0 skipped" in done.stdout
    assert "timed out" in done.stdout and "not run" in done.stdout  # the study never ran
    assert "SOME STEPS FAILED" in done.stdout
