"""The precision benchmark: both GEMM rates measured, and the rule's decision beside them."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_precision  # noqa: E402


def test_benchmark_prints_both_rates_and_what_the_rule_decides(capsys):
    assert bench_precision.main(["--budget", "0.02"]) == 0
    out = capsys.readouterr().out
    rates = re.search(r"bf16 GEMM (\d+) GFLOP/s, fp32 (\d+): ([\d.]+)x", out)
    assert rates and int(rates[1]) > 0 and int(rates[2]) > 0, out
    assert re.search(r"rule: mixed_precision=bf16 runs (bf16|no) \(this (AMD )?CPU", out), out
    assert re.search(r"rule vs measurement: (agree|DISAGREE)", out), out
