"""The tables ``bench_train_eval.py`` prints, and the headline figures it writes with ``--json``."""

from __future__ import annotations

from _children import EVAL_BATCH
from _common import steady_images_per_second, table
from _limits import BATCH
from _mfu import peak_gflops

PLAIN_EVAL_BATCH = 16  # as bench_train_eval's
MODEL_NAMES = {"small": "ViT-S/16 224 px", "base": "ViT-B/16 224 px", "tiny": "tiny ViT 32 px"}


def profile_report(result: dict, precision: str) -> str:
    """The toolkit's training step by operator (self CPU time), matrix multiplies first."""
    per_step = result["profile_ms_per_step"]
    total = result["profile_total_ms_per_step"]
    gemm = sum(
        ms for name, ms in per_step.items() if name in ("aten::mm", "aten::addmm", "aten::bmm")
    )
    rows = [[name, f"{ms:.1f}", f"{100 * ms / total:.0f}%"] for name, ms in per_step.items()]
    return "\n".join(
        [
            (
                f"# toolkit training step by operator ({precision}, ViT-S/16, LoRA r=16 q,v, batch 16; "
                f"torch.profiler self CPU time per step over {len(result['step_seconds'])} steps, "
                "including the warm-up steps, the closing selection evaluation and the profiler's own "
                "overhead)"
            ),
            table(["operator", "ms per step", "share"], rows),
            (
                f"all operators {total:.0f} ms per step; matrix multiplies (mm, addmm, bmm) {gemm:.0f} ms "
                f"({100 * gemm / total:.0f}%)"
            ),
        ]
    )


def report(host, precision, limits, results, levers, args, seconds, why) -> tuple[str, dict]:
    """(the report's text, the headline figures for ``--json``)."""
    flops = limits["flops"]
    measured = {name: max(rates.values()) for name, rates in limits["gemm"].items()}
    gpu = host["gpu"] if args.device == "cuda" else None
    # A GPU's datasheet peak is a bf16 tensor-core figure: fp32 keeps the measured rate.
    peaks = {p: peak_gflops(gpu if p == "bf16" else None, measured[p]) for p in measured}
    rate = {p: peak for p, (peak, _) in peaks.items()}
    limit_train = {p: rate[p] * 1e9 / flops["train_counted"] for p in rate}
    limit_eval = {p: rate[p] * 1e9 / flops["eval_counted"] for p in rate}

    def train_ips(key):
        r = results[key]
        warm = min(args.warmup, len(r["step_seconds"]) - 1)  # the bf16 run has 2 steps
        return steady_images_per_second(r["step_seconds"], r["batch_size"], warm)

    def eval_ips(key):
        return results[key]["images"] / results[key]["seconds"]

    def row(phase, side, key, speed, reference, limit, compute=None):
        r = results[key]
        compute = compute or {"no": "fp32"}.get(r.get("precision"), r.get("precision", precision))
        ratio = "1.00x" if speed == reference else f"{speed / reference:.2f}x"
        rounds = ", ".join(f"{v:.2f}" for v, _ in r.get("all_speeds", [(speed, 0)]))
        return [
            phase,
            side,
            compute,
            f"{speed:.2f}",
            ratio,
            f"{100 * speed / limit:.0f}%",
            f"{r['maxrss_mib']:.0f}",
            f"{100 * r['others_cpu']:.0f}%",
            rounds,
        ]

    t_tool, t_plain = train_ips("toolkit train"), train_ips("plain train")
    e_tool, e_plain = eval_ips("toolkit eval"), eval_ips("plain eval")
    rows = [row("training", "toolkit", "toolkit train", t_tool, t_plain, limit_train[precision])]
    if "toolkit-nofast train" in results:
        rows.append(
            row(
                "training",
                "toolkit, train.fast_kernels=false",
                "toolkit-nofast train",
                train_ips("toolkit-nofast train"),
                t_plain,
                limit_train[precision],
            )
        )
    rows.append(
        row(
            "training",
            "plain Trainer+PEFT",
            "plain train",
            t_plain,
            t_plain,
            limit_train[precision],
        )
    )
    if "plain bf16 train" in results:
        t_bf16 = train_ips("plain bf16 train")
        rows.append(
            row(
                "training",
                "plain, bf16=True as written",
                "plain bf16 train",
                t_bf16,
                t_plain,
                limit_train["bf16"],
                "bf16 (emulated)",
            )
        )
        rows[-1][5] += " of bf16"
    tool_eval = results["toolkit eval"]
    cold = tool_eval["images"] / (tool_eval["seconds"] + tool_eval["decode_seconds"])
    rows += [
        row(
            "evaluation",
            "toolkit (decode cache warm)",
            "toolkit eval",
            e_tool,
            e_plain,
            limit_eval[precision],
        ),
        row(
            "evaluation",
            "toolkit (incl. cold decode)",
            "toolkit eval",
            cold,
            e_plain,
            limit_eval[precision],
        ),
        row(
            "evaluation",
            "plain Trainer.evaluate",
            "plain eval",
            e_plain,
            e_plain,
            limit_eval[precision],
        ),
    ]
    rows[-2][-1] = ""
    if "plain bf16 eval" in results:
        e_bf16 = eval_ips("plain bf16 eval")
        rows.append(
            row(
                "evaluation",
                "plain, bf16=True as written",
                "plain bf16 eval",
                e_bf16,
                e_plain,
                limit_eval["bf16"],
                "bf16 (emulated)",
            )
        )
        rows[-1][5] += " of bf16"
    main_table = table(
        [
            "phase",
            "side",
            "precision",
            "images/s",
            "vs plain",
            "% of peak (MFU)",
            "peak RSS MiB",
            "co-tenant CPU",
            "all rounds img/s",
        ],
        rows,
    )
    if "plain bf16 train" in results:
        main_table += (
            f"\ntoolkit ({precision}) vs the plain path as written (bf16=True): "
            f"training {t_tool / t_bf16:.1f}x, evaluation {e_tool / e_bf16:.1f}x"
        )
    main_table += "\nwhy each side ran in its precision: " + "; ".join(
        f"{side}: {reason}" for side, reason in why.items()
    )
    main_table += "\npeak: " + peaks[precision][1]

    gemm = "; ".join(
        f"{p}: " + ", ".join(f"{shape} {v:.1f}" for shape, v in r.items())
        for p, r in limits["gemm"].items()
    )
    limit_rows = [
        [p, f"{rate[p]:.1f}", f"{limit_train[p]:.2f}", f"{limit_eval[p]:.2f}"] for p in rate
    ]
    summary = {
        "train": {
            "toolkit": t_tool,
            "plain": t_plain,
            "ratio": t_tool / t_plain,
            "mfu_toolkit": t_tool / limit_train[precision],
            "mfu_plain": t_plain / limit_train[precision],
        },
        "eval": {
            "toolkit": e_tool,
            "plain": e_plain,
            "ratio": e_tool / e_plain,
            "toolkit_incl_cold_decode": cold,
            "mfu_toolkit": e_tool / limit_eval[precision],
            "mfu_plain": e_plain / limit_eval[precision],
        },
        "flops_per_image": {"train": flops["train_counted"], "eval": flops["eval_counted"]},
        "peak_gflops": rate[precision],
        "peak_source": peaks[precision][1],
        "ran": {
            "toolkit": results["toolkit train"].get("precision"),
            "plain": results["plain train"].get("precision"),
        },
        "why": why,
        "wall_seconds": seconds,
    }
    head = [
        "",
        f"# bench_train_eval: {MODEL_NAMES[args.backbone_size]}, LoRA r=16 on q,v (dropout 0.1), "
        f"batch {args.batch_size}, {args.device}"
        + (f" ({gpu})" if gpu else "")
        + f", {host['threads']} threads",
        (
            f"machine: {host['cpu']}, {host['cores']} cores ({host['isa']}), torch {host['torch']}, "
            f"load average (1/5/15 min) at start {host['load_avg']}, at end {host['load_avg_end']}"
        ),
        (
            f"training: median step after {args.warmup} warm-up steps of {args.steps}, fastest of "
            f"{args.rounds}+ alternating runs per side (co-tenant CPU: the share of the cores other "
            f"processes used during the counted run); evaluation: "
            f"{results['toolkit eval']['images']} test images (toolkit eval_batch_size {EVAL_BATCH}, "
            f"{results['toolkit eval']['forward_batch']} per forward on this CPU; plain batch "
            f"{PLAIN_EVAL_BATCH}); toolkit cold decode of them: "
            f"{results['toolkit eval']['decode_seconds']:.1f} s"
        ),
        "",
        main_table,
        "",
        (
            f"FLOPs per image (FlopCounterMode, eager attention): training "
            f"{flops['train_counted'] / 1e9:.2f} G (analytic {flops['train_analytic'] / 1e9:.2f} G), "
            f"forward {flops['eval_counted'] / 1e9:.2f} G (analytic "
            f"{flops['eval_analytic'] / 1e9:.2f} G)"
        ),
        f"GEMM GFLOP/s (best of 3): {gemm}",
        table(
            ["precision", "peak GFLOP/s", "training limit img/s", "forward limit img/s"], limit_rows
        ),
    ]
    if args.quick:
        return "\n".join([*head, f"\nbenchmark wall time {seconds / 60:.1f} min"]), summary
    kernel_rows = [[name, f"{ms:.2f}"] for name, ms in limits["kernels_ms"].items()]
    ceiling_rows = []
    for phase, speed, limit in (
        ("training", t_tool, limit_train[precision]),
        ("evaluation", e_tool, limit_eval[precision]),
    ):
        c = limits["gemm_ceiling"]["train" if phase == "training" else "eval"]
        ceiling = c["images"] / (c["ms"] / 1e3)
        ceiling_rows.append(
            [
                phase,
                str(c["calls"]),
                f"{c['gflop']:.1f}",
                f"{c['ms']:.1f}",
                f"{c['gflop'] / c['ms'] * 1e3:.0f}",
                f"{ceiling:.1f}",
                f"{100 * ceiling / limit:.0f}%",
                f"{100 * speed / ceiling:.0f}%",
            ]
        )
    lever_rows = []
    for setting, r in levers.items():
        speed = steady_images_per_second(r["step_seconds"], r["batch_size"], args.warmup)
        lever_rows.append(
            [
                setting,
                f"{speed:.2f}",
                f"{speed / t_tool:.2f}x",
                f"{r['step_seconds'][0]:.1f}",
                f"{r['maxrss_mib']:.0f}",
                f"{results['toolkit train']['maxrss_mib']:.0f}",
                f"{100 * r['others_cpu']:.0f}%",
            ]
        )
    probe_rows = [
        [
            r["setting"],
            f"{r['images_per_s']:.2f}",
            f"{r['loss']:.4f}",
            f"{r.get('max_logit_diff', 0):.4f}",
            str(r.get("argmax_agree", "-")),
            f"{r.get('grad_cosine', 1):.4f}",
        ]
        for r in limits["probe"]
    ]
    return "\n".join(
        [
            *head,
            "",
            (
                f"GEMM-only ceiling ({precision}): one batch of {BATCH}'s matrix multiplies alone, at the "
                "model's shapes and layouts, back to back (evaluation: adapters folded, as the toolkit "
                "runs it); the speed if everything else in the step were free:"
            ),
            table(
                [
                    "phase",
                    "matrix multiplies",
                    "GFLOP",
                    "ms",
                    "GFLOP/s",
                    "ceiling img/s",
                    "ceiling % of limit",
                    "toolkit % of ceiling",
                ],
                ceiling_rows,
            ),
            "",
            "training options (toolkit, one run each; the first step includes any compilation):",
            table(
                [
                    "setting",
                    "images/s",
                    "vs toolkit default",
                    "first step s",
                    "peak RSS MiB",
                    "default's peak RSS MiB",
                    "co-tenant CPU",
                ],
                lever_rows,
            ),
            "",
            (
                f"kernels ({precision}, forward + backward, ViT-S shapes at batch 16; one attention per "
                "layer, one dropout per LoRA projection):"
            ),
            table(["kernel", "ms per call"], kernel_rows),
            "",
            "precision probe (one training step of 4 images, LoRA ViT-S, vs fp32):",
            table(
                [
                    "setting",
                    "images/s",
                    "loss",
                    "max |logit diff|",
                    "same argmax",
                    "LoRA grad cosine",
                ],
                probe_rows,
            ),
            f"\nbenchmark wall time {seconds / 60:.1f} min",
        ]
    ), summary
