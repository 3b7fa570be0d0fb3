"""Training and evaluation throughput of emoset_peft vs the plain Trainer + PEFT path, against
the machine's physical limit, with peak memory. One command, one table:

    python benchmarks/bench_train_eval.py [--workdir DIR] [--steps 8] [--warmup 2] [--rounds 2]
        [--no-bf16] [--device cpu|cuda] [--backbone-size small|base|tiny] [--batch-size 16]
        [--quick] [--tiny] [--json PATH]

Both sides: synthetic EmoSet-shaped JPEGs of 300-640 px, a random-init ViT-S/16 at 224 px loaded
from a folder (``--backbone-size base``: ViT-B/16), LoRA r=16 (alpha 16, dropout 0.1) on q and
v, batch 16, torch's default threads. Precision: the toolkit's decision for ``bf16``
(``engine.precision.decide_precision``: from the device and its CPU flags; on a CPU, bf16 with
AMX or AMD's AVX512-BF16), printed with its reason; both sides run in it, so the ratios compare
like with like, and the plain path as a user writes it (``bf16=True``) is measured as well where
the toolkit chose fp32, unless ``--no-bf16``. Each measurement runs in its own process (peak RSS
is its ``ru_maxrss``); each side runs ``--rounds`` times, alternating, plus retries while a
co-tenant used the cores, and its fastest run counts. Training images/s: median step time after
``--warmup`` steps; the toolkit's step times come from ``fit(on_step=...)``, the plain
path's from a ``TrainerCallback``; both include the data. The toolkit also trains with
``train.fast_kernels=false`` (SDPA attention and ``nn.Dropout``), and a kernel table times
those two pieces alone. Evaluation: a 256-image test split after a 32-image warm-up; the
toolkit reads its decode cache (the cold decode is timed separately), the plain path decodes
every JPEG.
The limit: FLOPs per image (``torch.utils.flop_counter.FlopCounterMode`` on the same model with
eager attention; training = forward + input-gradient backward + adapter weight gradients)
divided by the peak of the precision in use (``_mfu.peak_gflops``: a GPU's datasheet dense bf16
peak, else the best GEMM rate measured in this run); "% of peak" is the model-FLOPs utilisation.
The GEMM-only ceiling runs one step's matrix multiplies alone (``_limits.gemm_sequence``): how
close to the limit the step could get if all its other work were free.
``--quick`` keeps only the toolkit-vs-plain training and evaluation rows (for ``gpu_check.sh``);
``--tiny`` is a seconds-long dry run of the script itself (tiny ViT, tiny tree, ``--quick``, the
toolkit's sides in this process; the plain path still runs as its own script).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _children import CHILDREN, TRAIN_PER_CLASS
from _common import (
    PLAIN,
    machine,
    run_child,
    run_inline,
    save_vit,
    steady_images_per_second,
    synthetic_tree,
    write_records,
)
from _limits import LORA
from _report import profile_report, report

PLAIN_EVAL_BATCH = 16  # the example uses one batch size for training and evaluation
QUIET = 0.10  # a run is "quiet" when other processes kept under 10% of the cores busy
BACKBONE_FOLDERS = {"small": "vit-s16", "base": "vit-b16", "tiny": "vit-tiny"}


# -- the orchestrator -----------------------------------------------------------------------------


def setup(
    workdir: Path, size: str = "small", tiny_data: bool = False, per_class: int = TRAIN_PER_CLASS
) -> dict:
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.subsets import low_data_subset

    root = synthetic_tree(workdir, tiny=tiny_data)
    backbone = save_vit(workdir / BACKBONE_FOLDERS[size], size)
    cache = workdir / ("cache-tiny" if tiny_data else "cache")
    emoset = load_emoset(root, cache_dir=cache)
    train = low_data_subset(emoset["train"], per_class=per_class, seed=0)
    records = write_records(
        workdir / f"records_train_eval{'_tiny' if tiny_data else ''}.json",
        emoset["train"].features["label"].names,
        {"train": train, "test": emoset["test"]},
    )
    return {
        "root": str(root),
        "backbone": str(backbone),
        "cache": str(cache),
        "records": str(records),
        "test_images": len(emoset["test"]),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep data and backbone here (default: a temp folder)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measurements per side, alternating; the best counts"
    )
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="skip the plain path with bf16=True (slow where bf16 is emulated)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only profile the toolkit's training step (torch.profiler) and "
        "print where its time goes",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--backbone-size",
        choices=sorted(BACKBONE_FOLDERS),
        default="small",
        help="random-init ViT: small = ViT-S/16, base = ViT-B/16 (224 px); "
        "tiny = 32 px, 2 layers (dry runs)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="training batch, both sides")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only toolkit vs plain, training and evaluation (no levers, "
        "kernels, GEMM ceiling, emulated-bf16 runs); implied by any "
        "backbone size but small",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="dry run: tiny ViT and data, --quick, 3 steps, 1 round"
    )
    parser.add_argument("--json", help="also write the headline figures to this JSON file")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.backbone_size, args.quick, args.no_bf16 = "tiny", True, True
        args.steps, args.warmup, args.rounds = min(args.steps, 3), 1, 1
    if args.backbone_size != "small":  # the kernel and GEMM-ceiling tables are ViT-S shapes
        args.quick = True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](json.loads(args.options))
        result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    import torch

    from emoset_peft.engine.precision import decide_precision

    started = time.perf_counter()
    host = machine()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emoset-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    per_class = 4 if args.tiny else TRAIN_PER_CLASS
    paths = setup(workdir, args.backbone_size, args.tiny, per_class)
    image_size = 32 if args.backbone_size == "tiny" else 224
    decision = decide_precision("bf16", torch.device(args.device))
    precision = "bf16" if decision.resolved == "bf16" else "fp32"
    toolkit_precision = "bf16" if precision == "bf16" else "no"
    why = {
        "toolkit": decision.reason,
        "plain": f"set to the toolkit's {precision} so that the ratios compare like with like",
    }
    print(
        f"machine: {host}\nprecision: toolkit {precision} ({decision.reason}); plain "
        f"Trainer+PEFT {precision} ({why['plain']})",
        flush=True,
    )

    def toolkit(child, **extra):
        # The children run exactly what was decided here ("bf16!" is never changed).
        options = {
            **paths,
            "precision": toolkit_precision,
            "steps": args.steps,
            "mixed_precision": "bf16!" if precision == "bf16" else "no",
            "out": str(workdir / "run"),
            "device": args.device,
            "batch": args.batch_size,
            "image_size": image_size,
            "train_per_class": per_class,
            **extra,
        }
        if args.tiny:  # a dry run of the script, not a measurement: no interpreter per side
            return run_inline(CHILDREN[child], options)
        return run_child([__file__, "--child", child, "--options", json.dumps(options)])

    def plain(mode, *extra):
        return run_child(
            [
                PLAIN,
                mode,
                "--backbone",
                paths["backbone"],
                "--records",
                paths["records"],
                "--r",
                LORA["r"],
                "--alpha",
                LORA["alpha"],
                "--dropout",
                LORA["dropout"],
                "--batch-size",
                args.batch_size,
                "--eval-batch-size",
                PLAIN_EVAL_BATCH,
                "--device",
                args.device,
                "--warmup-images",
                min(32, paths["test_images"]),
                *extra,
            ]
        )

    if args.profile:
        print(profile_report(toolkit("toolkit-train", profile=True), precision))
        return 0
    limits = toolkit(
        "limits", quick=args.quick, tiny=args.tiny, gemm_budget=0.05 if args.tiny else 1.0
    )
    print("limits measured", flush=True)
    results = {}

    def train_speed(r):
        return steady_images_per_second(
            r["step_seconds"], r["batch_size"], min(args.warmup, len(r["step_seconds"]) - 1)
        )

    def eval_speed(r):
        return r["images"] / r["seconds"]

    def measure(phase, runners, speed):
        """``args.rounds`` alternating runs per side, plus up to 2 more for a side whose best
        run shared the machine with a co-tenant; the fastest run counts (a co-tenant only
        slows a run down), its peak RSS is the maximum over the runs."""
        runs = {side: [] for side in runners}
        for round_index in range(args.rounds):  # alternate: neither side always goes first
            order = list(runners) if round_index % 2 == 0 else list(runners)[::-1]
            for side in order:
                runs[side].append(runners[side]())
        for side, run in runners.items():
            for _ in range(0 if args.tiny else 2):
                if max(runs[side], key=speed)["others_cpu"] <= QUIET:
                    break
                runs[side].append(run())
        for side, side_runs in runs.items():
            best = dict(max(side_runs, key=speed))
            best["maxrss_mib"] = max(r["maxrss_mib"] for r in side_runs)
            best["all_speeds"] = [(speed(r), r["others_cpu"]) for r in side_runs]
            results[f"{side} {phase}"] = best
        print(
            f"{phase}: "
            + "; ".join(
                f"{side} "
                + ", ".join(
                    f"{v:.2f} img/s (co-tenant {100 * o:.0f}%)"
                    for v, o in results[f"{side} {phase}"]["all_speeds"]
                )
                for side in runs
            ),
            flush=True,
        )

    train_sides = {
        "toolkit": lambda: toolkit("toolkit-train"),
        "plain": lambda: plain("train-throughput", "--steps", args.steps, "--precision", precision),
    }
    if not args.quick:
        train_sides["toolkit-nofast"] = lambda: toolkit("toolkit-train", fast_kernels=False)
    measure("train", train_sides, train_speed)
    levers = {}
    if not args.quick:
        limits.update(toolkit("kernels"))
        limits.update(toolkit("gemm-ceiling"))
        # Options a user may switch on, once each: memory for time, and a compiled model.
        levers = {
            "model.gradient_checkpointing=true": toolkit(
                "toolkit-train", gradient_checkpointing=True
            ),
            "train.compile=true": toolkit("toolkit-train", compile=True),
        }
        print("levers measured", flush=True)
    cold = str(workdir / "cold_cache")

    def toolkit_eval():
        shutil.rmtree(cold, ignore_errors=True)  # the toolkit's decode is timed cold
        return toolkit("toolkit-eval", cold_cache=cold)

    measure(
        "eval",
        {
            "toolkit": toolkit_eval,
            "plain": lambda: plain("eval-throughput", "--precision", precision),
        },
        eval_speed,
    )
    if not args.no_bf16 and not args.quick and precision != "bf16":  # one run each (slow)
        for phase, run, speed in (
            (
                "train",
                lambda: plain("train-throughput", "--steps", 2, "--precision", "bf16"),
                train_speed,
            ),
            (
                "eval",
                lambda: plain(
                    "eval-throughput",
                    "--precision",
                    "bf16",
                    "--eval-images",
                    48,
                    "--warmup-images",
                    16,
                ),
                eval_speed,
            ),
        ):
            result = run()
            if result["others_cpu"] > QUIET:
                result = max(result, run(), key=speed)
            results[f"plain bf16 {phase}"] = result
        why["plain bf16"] = "bf16=True as a user writes it, whatever the hardware"
    if not args.quick:
        again = toolkit("gemm", precisions=[precision])["gemm"]  # again at the end: keep the best
        for name, rates in again.items():
            for shape, rate in rates.items():
                limits["gemm"][name][shape] = max(rate, limits["gemm"][name][shape])
    host["load_avg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text, summary = report(
        host, precision, limits, results, levers, args, time.perf_counter() - started, why
    )
    print(text)
    if args.json:
        summary.update(
            device=args.device,
            device_name=host["gpu"] or host["cpu"],
            backbone_size=args.backbone_size,
            batch=args.batch_size,
            precision=decision.as_dict(),
        )
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
