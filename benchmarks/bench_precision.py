"""Check the precision rule on this machine: both GEMM rates at ViT-S/16's shapes, and what
``train.mixed_precision=bf16`` (or fp16) becomes here.

    python benchmarks/bench_precision.py     # [--device cpu|cuda] [--low bf16|fp16] [--budget 1.0]

Runs never time anything at start: ``engine/precision.py`` decides from the device and its CPU
flags alone (bf16 on a CPU only with AMX), so that a result does not depend on how busy the
machine was. This script is where the rule is checked against a measurement. Rates vary with the
machine's load (compare them only as a ratio within one run); the line "rule vs measurement"
says whether the faster precision is the one the rule picks. Where it is not, force the
faster one with ``train.mixed_precision=bf16!`` (or ``=no``) and report the machine.
"""

from __future__ import annotations

import argparse
import sys

from _common import machine
from _limits import BATCH, MLP, TOKENS, WIDTH, gemm_rate

# q/k/v/o, then the MLP's fc1 and fc2, at a batch of 16 (16 x 197 tokens): the products of a
# ViT-S training step, where the precisions' kernels differ the most in practice (a large
# square flatters AMX more than these do).
VIT_SHAPES = (
    (BATCH * TOKENS, WIDTH, WIDTH),
    (BATCH * TOKENS, WIDTH, MLP),
    (BATCH * TOKENS, MLP, WIDTH),
)


def rates(low: str, device: str, budget_s: float) -> dict[str, float]:
    """GFLOP/s of ``low`` and fp32 over VIT_SHAPES: total FLOPs over the summed best times."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out = {}
    for name in (low, "fp32"):
        flops = seconds = 0.0
        for shape in VIT_SHAPES:
            work = 2.0 * shape[0] * shape[1] * shape[2]
            flops += work
            seconds += work / (gemm_rate(*shape, dtypes[name], budget_s, device=device) * 1e9)
        out[name] = flops / seconds / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--low", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per shape and dtype")
    args = parser.parse_args(argv)

    import torch

    from emoset_peft.engine.precision import decide_precision

    host = machine()
    measured = rates(args.low, args.device, args.budget)
    decision = decide_precision(args.low, torch.device(args.device))
    ratio = measured[args.low] / measured["fp32"]
    faster = args.low if ratio > 1 else "no"
    print(
        f"machine: {host['cpu']} ({host['isa']}; {host['threads']} threads; load {host['load_avg']})"
    )
    print(
        f"{args.low} GEMM {measured[args.low]:.0f} GFLOP/s, fp32 {measured['fp32']:.0f}: {ratio:.2f}x"
    )
    print(f"rule: mixed_precision={args.low} runs {decision.resolved} ({decision.reason})")
    agrees = "agree" if decision.resolved == faster else "DISAGREE"
    print(f"rule vs measurement: {agrees} (faster here: {'fp32' if faster == 'no' else faster})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
