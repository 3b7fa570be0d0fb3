"""The benchmark's GEMM-only ceiling runs exactly the FLOPs the limit is computed from: its list
of matrix multiplies adds up to the analytic count (which the benchmark checks against FlopCounterMode)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _limits import LAYERS, LORA, TOKENS, WIDTH, analytic_flops, gemm_sequence  # noqa: E402


def test_gemm_sequence_adds_up_to_the_analytic_flops():
    train_flops, forward_flops = analytic_flops()
    calls, flops = gemm_sequence(True, torch.float32, batch=1)
    assert flops == train_flops
    assert len(calls) == 358
    calls, flops = gemm_sequence(False, torch.float32, batch=1)
    lora_forward = LAYERS * 2 * 2 * 2 * TOKENS * WIDTH * LORA["r"]  # folded at evaluation
    assert flops == forward_flops - lora_forward
    assert calls[0]().shape == (TOKENS - 1, WIDTH)  # the patch embedding's product runs
