"""benchmarks/issue15_table.py lays the benchmarks' --json figures out as one table (the
benchmarks themselves run on a quiet machine; here only the script and its table)."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from issue15_table import render  # noqa: E402

HOST = {"cpu": "Some Xeon", "cores": 2, "isa": "avx2,avx512_bf16"}


def test_the_table_has_a_row_per_figure_and_names_a_failed_step():
    results = {
        "train_eval": {
            "train": {"toolkit": 30.0, "plain": 18.0, "ratio": 30 / 18},
            "eval": {"toolkit": 120.0, "plain": 80.0, "ratio": 1.5},
            "ran": {"toolkit": "bf16", "plain": "bf16"},
            "why": {"toolkit": "bf16 GEMM 3844 GFLOP/s vs fp32 438: 8.77x >= 1.15x, so bf16"},
            "precision": {"reason": "bf16 GEMM 3844 GFLOP/s vs fp32 438: 8.77x >= 1.15x, so bf16"},
            "wall_seconds": 150.0,
        },
        "study": {"error": "exit 1, see /tmp/study.log", "wall_seconds": 3.0},
        "frozen": {
            "grid": {"size": "small"},
            "cells": 13,
            "study_seconds": {"off": 120.0, "auto": 10.0},
            "speedup": 12.0,
            "accuracy": {
                "linear": {"off": 0.41, "auto": 0.43, "abs_diff": 0.02, "seed_se": 0.015},
                "zeroshot": {"off": 0.125, "auto": 0.125, "abs_diff": 0.0, "seed_se": None},
            },
            "wall_seconds": 140.0,
        },
        "decode": {
            "images": 256,
            "size": 224,
            "threads_default": 2,
            "toolkit_default_threads": 210.0,
            "toolkit_1_thread": 120.0,
            "pil_torchvision": 90.0,
            "ratio": 210 / 90,
            "wall_seconds": 20.0,
        },
        "demo": {
            "cells": 54,
            "seconds_per_cell": {"decode": 0.1, "train steps": 1.2, "test eval": 0.4},
            "missing": [],
        },
    }
    text = render(results, HOST)
    assert text.startswith("| measure") and text.count("\n") >= 9
    assert "bf16 / bf16" in text and "8.77x >= 1.15x" in text
    assert "**1.67x**" in text and "**1.50x**" in text and "**12.00x**" in text
    assert "linear off 0.410 / auto 0.430 (abs diff 0.020, seed SE 0.015)" in text
    assert "| study benchmark" in text and "**failed**" in text and "/tmp/study.log" in text
    assert "train steps 1.20" in text and "train_eval 2.5 min" in text


def test_the_script_explains_itself():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "issue15_table.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--demo-study" in done.stdout and "--dry-run" in done.stdout
