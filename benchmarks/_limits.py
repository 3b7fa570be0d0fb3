"""The physical limit of a training or evaluation step, for ``bench_train_eval.py``.

- ``analytic_flops``: FLOPs per image of ViT-S/16 + LoRA on q, v (checked against
  ``FlopCounterMode`` in ``child_limits``).
- ``child_gemm``: the best GEMM rate of each precision, at a large square and ViT-S's shapes.
- ``child_gemm_ceiling``: the step's own matrix multiplies, every one of them at the model's
  shapes and memory layouts, run back to back with nothing else: the speed the step would have
  if all its other work (attention softmax, GELU, layer norms, dropout, casts, adds, the
  optimizer) were free. Where that ceiling is below a target share of the limit, no fusion of
  the other work can reach the target with these GEMM kernels.
"""

from __future__ import annotations

import time

LORA = {"r": 16, "alpha": 16, "dropout": 0.1}
# ViT-S/16 at 224 px, batch 16: the shapes of every product in one step.
TOKENS, WIDTH, LAYERS, HEADS, MLP, PATCH_PIXELS, CLASSES, BATCH = 197, 384, 12, 6, 1536, 768, 8, 16


def gemm_rate(n: int, k: int, m: int, dtype, budget_s: float = 1.0, device: str = "cpu") -> float:
    """Best-of-3 GFLOP/s of an [n, k] x [k, m] product in ``dtype``, in both memory layouts
    (``x @ w`` and ``F.linear(x, w)``, whose weight is transposed): where bf16 is emulated the
    two differ by 10x, and the best one is what the hardware can do. On a GPU every timing
    waits for the device (``synchronize``)."""
    import torch
    import torch.nn.functional as F

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    x = torch.randn(n, k, device=device).to(dtype)
    w_kn = torch.randn(k, m, device=device).to(dtype)
    w_mk = torch.randn(m, k, device=device).to(dtype)
    once = {}
    for product in (lambda: x @ w_kn, lambda: F.linear(x, w_mk)):
        product()  # warm-up, then one timed call picks the faster layout
        sync()
        tick = time.perf_counter()
        product()
        sync()
        once[product] = max(time.perf_counter() - tick, 1e-5)
    product, seconds = min(once.items(), key=lambda item: item[1])
    reps, best = max(1, int(budget_s / 3 / seconds)), 0.0
    for _ in range(3):
        sync()
        tick = time.perf_counter()
        for _ in range(reps):
            product()
        sync()
        best = max(best, 2 * n * k * m * reps / (time.perf_counter() - tick) / 1e9)
    return best


def model_dims(backbone: str) -> dict:
    """The shapes ``analytic_flops`` needs, from a saved ViT's config.json."""
    import json
    from pathlib import Path

    c = json.loads((Path(backbone) / "config.json").read_text())
    side = c["image_size"] // c["patch_size"]
    return {
        "tokens": side * side + 1,
        "d": c["hidden_size"],
        "layers": c["num_hidden_layers"],
        "mlp": c["intermediate_size"],
        "patch_pixels": 3 * c["patch_size"] ** 2,
        "image_size": c["image_size"],
    }


def plain_lora_vit(backbone: str, attn: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(
        backbone, num_labels=8, ignore_mismatched_sizes=True, attn_implementation=attn
    )
    config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["classifier"],
    )
    return get_peft_model(model, config)


def analytic_flops(
    tokens=TOKENS,
    d=WIDTH,
    layers=LAYERS,
    mlp=MLP,
    r=LORA["r"],
    patch_pixels=PATCH_PIXELS,
    classes=CLASSES,
) -> tuple[float, float]:
    """(training, forward) FLOPs per image of ViT-S/16 + LoRA on q, v; 1 MAC = 2 FLOPs.

    Backward: input gradients of every matmul (attention's two batched matmuls cost 2x their
    forward), except in layer 0, whose input needs none: there only the o/MLP projections, the
    gradients of q and v (for their adapters) and the adapters' B input gradients remain. Weight
    gradients only for the adapters and the head; frozen weights get none.
    """
    proj = 4 * tokens * d * d  # q, k, v, o
    ffn = 2 * tokens * d * mlp
    attn = 2 * tokens * tokens * d  # q k^T and attention @ v
    lora = 2 * 2 * tokens * d * r  # A then B, on q and v
    patch = (tokens - 1) * patch_pixels * d
    head = d * classes
    forward = layers * (proj + ffn + attn + lora) + patch + head
    first_layer_skipped = 3 * tokens * d * d + tokens * tokens * d + lora // 2  # q,k,v in; dK; A in
    backward_input = layers * (proj + ffn + 2 * attn + lora) - first_layer_skipped + head
    backward_weights = layers * lora + head
    return 2.0 * (forward + backward_input + backward_weights), 2.0 * forward


def child_gemm(o: dict) -> dict:
    """Best-of-3 GEMM rates: a large square and the model's MLP shapes (batch x tokens rows)."""
    import torch

    device = o.get("device", "cpu")
    dims = (
        model_dims(o["backbone"])
        if o.get("backbone")
        else {"tokens": TOKENS, "d": WIDTH, "mlp": MLP}
    )
    rows = o.get("batch", BATCH) * dims["tokens"]  # 3152 = 16 images x 197 tokens for ViT-S
    out = {"gemm": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in o.get("precisions", ("fp32", "bf16")):
            continue
        big = 8192 if device != "cpu" else 4096 if dtype == torch.float32 else 1024
        # (emulated bf16 on a CPU is too slow at 4096)
        d, mlp = dims["d"], dims["mlp"]
        shapes = [(big, big, big)] * (not o.get("tiny")) + [
            (rows, d, d),
            (rows, d, mlp),
            (rows, mlp, d),
        ]
        out["gemm"][name] = {
            "x".join(map(str, s)): gemm_rate(*s, dtype, o.get("gemm_budget", 1.0), device=device)
            for s in shapes
        }
    return out


def child_limits(o: dict) -> dict:
    """GEMM rates, FLOPs per image, and (unless ``quick``) the bf16 / bf16-frozen-weights probe."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from emoset_peft.engine.precision import cast_frozen_weights

    out = child_gemm(o)
    dims = model_dims(o["backbone"])
    side = dims.pop("image_size")

    torch.manual_seed(0)
    model = plain_lora_vit(o["backbone"], "eager")  # bmm attention, which the counter sees
    x, y = torch.randn(2, 3, side, side), torch.tensor([0, 1])
    model.train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(pixel_values=x).logits, y).backward()
    train_flops = counter.get_total_flops() / 2
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=x)
    out["flops"] = {"train_counted": train_flops, "eval_counted": counter.get_total_flops() / 2}
    out["flops"]["train_analytic"], out["flops"]["eval_analytic"] = analytic_flops(**dims)
    if o.get("quick"):
        return out

    # Precision probe on the sdpa model: one training step of 4 images per setting.
    probe = []
    x, y = torch.randn(4, 3, side, side), torch.tensor([0, 1, 2, 3])
    reference = None
    for setting in ("fp32", "bf16 autocast", "bf16 autocast + bf16 frozen weights"):
        torch.manual_seed(0)
        model = plain_lora_vit(o["backbone"], "sdpa").train()
        model.base_model.model.vit.eval()  # no dropout: compare like with like
        if "frozen" in setting:
            cast_frozen_weights(model, torch.bfloat16)
        context = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if "bf16" in setting
            else torch.autocast("cpu", enabled=False)
        )
        with context:
            model(pixel_values=x[:1])  # warm-up
        tick = time.perf_counter()
        with context:
            logits = model(pixel_values=x).logits.float()
            loss = F.cross_entropy(logits, y)
        loss.backward()
        seconds = time.perf_counter() - tick
        grads = torch.cat(
            [
                p.grad.flatten().float()
                for n, p in model.named_parameters()
                if p.requires_grad and "lora_B" in n
            ]
        )
        row = {"setting": setting, "images_per_s": 4 / seconds, "loss": loss.item()}
        if reference is None:
            reference = (logits.detach(), grads)
        else:
            row["max_logit_diff"] = (logits.detach() - reference[0]).abs().max().item()
            row["argmax_agree"] = bool((logits.argmax(1) == reference[0].argmax(1)).all())
            row["grad_cosine"] = F.cosine_similarity(grads, reference[1], dim=0).item()
        probe.append(row)
    out["probe"] = probe
    return out


def gemm_sequence(training: bool, dtype, batch: int = BATCH) -> tuple[list, float]:
    """(calls, FLOPs): every matrix multiply of one ViT-S + LoRA(q, v) step on ``batch``
    images, as zero-argument calls on their own operands (fresh memory per call, as in the
    model, where each product reads activations written long before), in the model's layouts:
    ``F.linear`` with [out, in] weights, attention as [batch, heads, tokens, head_dim] matmuls.

    Training: the forward with LoRA, then the backward of ``analytic_flops`` (input gradients
    of every product except layer 0's input side, LoRA and head weight gradients). Evaluation:
    the forward with the adapters folded into the weights (as ``predict_probs`` runs it).
    """
    import torch
    import torch.nn.functional as F

    n, d, r, t, hd = batch * TOKENS, WIDTH, LORA["r"], TOKENS, WIDTH // HEADS
    generator = torch.Generator().manual_seed(0)
    calls, flops = [], 0.0

    def tensor(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    def linear(rows, fan_in, fan_out):  # x [rows, in] @ W[out, in]^T
        x, w = tensor(rows, fan_in), tensor(fan_out, fan_in)
        calls.append(lambda: F.linear(x, w))
        return 2.0 * rows * fan_in * fan_out

    def mm(rows, inner, cols, transpose_first=False):  # [rows, inner] @ [inner, cols]
        a = tensor(inner, rows).t() if transpose_first else tensor(rows, inner)
        b = tensor(inner, cols)
        calls.append(lambda: a.mm(b))
        return 2.0 * rows * inner * cols

    def attention_matmul(rows, inner, cols, transpose_second=False):
        a = tensor(batch, HEADS, rows, inner)
        b = (
            tensor(batch, HEADS, cols, inner).transpose(-1, -2)
            if transpose_second
            else tensor(batch, HEADS, inner, cols)
        )
        calls.append(lambda: torch.matmul(a, b))
        return 2.0 * batch * HEADS * rows * inner * cols

    flops += linear(batch * (t - 1), PATCH_PIXELS, d)  # the patch embedding (a strided conv)
    for _ in range(LAYERS):
        flops += sum(linear(n, d, d) for _ in range(4))  # q, k, v, o
        flops += linear(n, d, MLP) + linear(n, MLP, d)
        flops += attention_matmul(t, hd, t, transpose_second=True)  # q k^T
        flops += attention_matmul(t, t, hd)  # probabilities @ v
        if training:
            flops += sum(linear(n, d, r) + linear(n, r, d) for _ in range(2))  # LoRA A, B
    flops += linear(batch, d, CLASSES)
    if not training:
        return calls, flops
    flops += mm(batch, CLASSES, d)  # head input gradient
    flops += mm(CLASSES, batch, d, transpose_first=True)  # head weight gradient
    for layer in range(LAYERS):
        first = layer == 0  # its input needs no gradient: only what q's and v's adapters need
        flops += mm(n, d, MLP) + mm(n, MLP, d)  # fc2, fc1 input gradients
        flops += mm(n, d, d)  # o
        flops += attention_matmul(t, hd, t, transpose_second=True)  # dP = dO v^T
        flops += attention_matmul(t, t, hd)  # dV = P^T dO
        flops += attention_matmul(t, t, hd)  # dQ = dS k
        if not first:
            flops += attention_matmul(t, t, hd)  # dK = dS^T q
            flops += sum(mm(n, d, d) for _ in range(3))  # q, k, v input gradients
        for _ in range(2):  # LoRA on q and v
            flops += mm(r, n, d, transpose_first=True)  # A weight gradient
            flops += mm(d, n, r, transpose_first=True)  # B weight gradient
            flops += mm(n, d, r)  # B input gradient
            if not first:
                flops += mm(n, r, d)  # A input gradient
    return calls, flops


def child_gemm_ceiling(o: dict) -> dict:
    """Milliseconds for one step's matrix multiplies alone (best of 3), training and forward."""
    import torch

    dtype = torch.bfloat16 if o["precision"] == "bf16" else torch.float32
    out = {}
    for phase, training in (("train", True), ("eval", False)):
        calls, flops = gemm_sequence(training, dtype)
        for call in calls:
            call()  # warm-up: oneDNN picks and caches its kernels
        best = float("inf")
        for _ in range(3):
            tick = time.perf_counter()
            for call in calls:
                call()
            best = min(best, time.perf_counter() - tick)
        out[phase] = {"ms": best * 1e3, "gflop": flops / 1e9, "calls": len(calls), "images": BATCH}
    return {"gemm_ceiling": out}
