"""The toolkit's sides of ``bench_train_eval.py``, each run in its own process: training
(``trainer.fit`` as ``emoset-peft train`` runs it), evaluation (cold decode, then
``predict_probs`` from the cache), and the kernel timings. Options come as one JSON object:
``device`` (cpu or cuda), ``image_size``, ``batch``, ``train_per_class`` and the paths."""

from __future__ import annotations

import math
import time

from _limits import LORA, child_gemm, child_gemm_ceiling, child_limits

TRAIN_PER_CLASS = 16  # 8 classes x 16 = 128 training images
EVAL_BATCH = 128  # the toolkit's default train.eval_batch_size


def _run_config(o: dict):
    from emoset_peft.config import RunConfig, from_dict

    raw = {
        "cpu": o.get("device", "cpu") == "cpu",
        "output_dir": o["out"],
        "data": {
            "root": o["root"],
            "per_class": o.get("train_per_class", TRAIN_PER_CLASS),
            "data_seed": 0,
            "selection_per_class": 1,
            "cache_dir": o["cache"],
        },
        "model": {
            "backbone": o["backbone"],
            "method": "lora",
            "options": LORA,
            "gradient_checkpointing": o.get("gradient_checkpointing", False),
        },
        "train": {
            "batch_size": o.get("batch", 16),
            "epochs": 0,
            "min_steps": o["steps"],
            "max_steps": o["steps"],
            "eval_every": 10**6,
            "lr": 5e-3,
            "mixed_precision": o.get("mixed_precision", o["precision"]),
            "eval_batch_size": EVAL_BATCH,
            "fast_kernels": o.get("fast_kernels", True),
            "compile": o.get("compile", False),
        },
    }
    return from_dict(RunConfig, raw, where="bench")


def child_toolkit_train(o: dict) -> dict:
    """The toolkit's own loop (recipe.run_training's setup + trainer.fit)."""
    import torch

    from emoset_peft.data.pipeline import Normalizer
    from emoset_peft.data.run_data import load_run_data
    from emoset_peft.engine.recipe import build_run_model, make_accelerator
    from emoset_peft.engine.trainer import fit
    from emoset_peft.models import input_spec

    config = _run_config(o)
    data = load_run_data(config.data, o.get("image_size", 224), show_progress=False)
    accelerator = make_accelerator(config)
    torch.manual_seed(0)
    model = build_run_model(
        config, data.class_names, o["steps"], precision=accelerator.mixed_precision
    ).to(accelerator.device)
    spec = input_spec(model)
    normalizer = Normalizer(spec.mean, spec.std, accelerator.device)
    profiler = None
    if o.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU])
        profiler.__enter__()
    step_seconds: list[float] = []
    fit(
        model,
        data,
        config.train,
        accelerator,
        normalizer,
        spec.image_size,
        show_progress=False,
        on_step=lambda _step, seconds: step_seconds.append(seconds),
    )
    out = {
        "step_seconds": step_seconds,
        "batch_size": config.train.batch_size,
        "precision": str(accelerator.mixed_precision),
    }
    if profiler is not None:
        profiler.__exit__(None, None, None)
        ops = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
        out["profile_ms_per_step"] = {
            e.key: e.self_cpu_time_total / 1e3 / o["steps"] for e in ops[:16]
        }
        out["profile_total_ms_per_step"] = (
            sum(e.self_cpu_time_total for e in ops) / 1e3 / o["steps"]
        )
    return out


def child_toolkit_eval(o: dict) -> dict:
    """Cold decode of the test split into a fresh cache, then predict_probs from the cache."""
    import torch

    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.pipeline import DecodedImages, Normalizer, decode_split
    from emoset_peft.engine.evaluate import cpu_forward_batch, predict_probs
    from emoset_peft.engine.recipe import build_run_model, make_accelerator
    from emoset_peft.models import input_spec

    config = _run_config(o)
    test_split = load_emoset(o["root"], cache_dir=o["cache"])["test"]
    tick = time.perf_counter()
    test = decode_split(
        test_split, o.get("image_size", 224), cache_dir=o["cold_cache"], show_progress=False
    )
    decode_seconds = time.perf_counter() - tick
    accelerator = make_accelerator(config)
    torch.manual_seed(0)
    model = build_run_model(
        config, list(test_split.features["label"].names), 1, precision=accelerator.mixed_precision
    )
    model.to(accelerator.device)
    spec = input_spec(model)
    normalizer = Normalizer(spec.mean, spec.std, accelerator.device)
    warm = DecodedImages(
        pixels=test.pixels[:32], labels=test.labels[:32], image_ids=test.image_ids[:32]
    )
    predict_probs(model, warm, accelerator, normalizer, spec.image_size, EVAL_BATCH)
    tick = time.perf_counter()
    probs = predict_probs(model, test, accelerator, normalizer, spec.image_size, EVAL_BATCH)
    seconds = time.perf_counter() - tick
    return {
        "seconds": seconds,
        "images": len(test),
        "decode_seconds": decode_seconds,
        "precision": str(accelerator.mixed_precision),
        "accuracy": float((probs.argmax(1) == test.labels).mean()),
        "forward_batch": cpu_forward_batch(model, EVAL_BATCH),
    }


def child_kernels(o: dict) -> dict:
    """Milliseconds per call, forward + backward, at ViT-S's shapes for a batch of 16: SDPA vs
    the toolkit's training attention (per layer, [16, 6, 197, 64]) and nn.Dropout vs
    FastDropout (per LoRA projection, [16, 197, 384]); best of 3 rounds of 10 calls."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from emoset_peft.models.kernels import FastDropout, fast_attention

    autocast = o["precision"] == "bf16"
    dtype = torch.bfloat16 if autocast else torch.float32

    class Layer(torch.nn.Module):
        is_causal = False

    q, k, v = (torch.randn(16, 6, 197, 64).to(dtype).requires_grad_() for _ in range(3))
    x = torch.randn(16, 197, 384, requires_grad=True)  # LoRA's dropout sees the fp32 LN output

    def attention(function):
        def call():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out, _ = function(Layer(), q, k, v, None, scaling=0.125)
            out.float().sum().backward()

        return call

    def dropout(layer):
        return lambda: layer(x).sum().backward()

    calls = {
        "attention: SDPA (fused)": attention(sdpa_attention_forward),
        "attention: toolkit (matmul + softmax)": attention(fast_attention),
        "dropout: nn.Dropout (bernoulli_)": dropout(torch.nn.Dropout(0.1)),
        "dropout: toolkit FastDropout": dropout(FastDropout(0.1)),
    }
    out = {}
    for name, call in calls.items():
        call()
        best = math.inf
        for _ in range(3):
            tick = time.perf_counter()
            for _ in range(10):
                call()
            best = min(best, (time.perf_counter() - tick) / 10)
        out[name] = best * 1e3
    return {"kernels_ms": out}


CHILDREN = {
    "toolkit-train": child_toolkit_train,
    "toolkit-eval": child_toolkit_eval,
    "limits": child_limits,
    "gemm": child_gemm,
    "kernels": child_kernels,
    "gemm-ceiling": child_gemm_ceiling,
}
