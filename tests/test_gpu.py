"""The GPU paths, checked on the device itself: bf16 autocast training, fused AdamW, pinned memory
with non-blocking copies, adapter folding, 4-bit LoRA and batch augmentation on the device.

Every test is marked ``gpu`` and runs only where ``torch.cuda.is_available()``; elsewhere it is
skipped with the reason. ``benchmarks/gpu_check.sh`` runs them first (``pytest -m gpu``).
"""

import json

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False)",
    ),
]
CUDA = torch.device("cuda")
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _trained_looking(backbone, method="lora", **options):
    """A model whose adapters are away from their (often identity) initial values."""
    from emoset_peft.models import build_model

    torch.manual_seed(0)
    model = build_model(backbone, method, **options)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator).to(param.device))
    return model


def test_bf16_autocast_training_run_on_the_gpu(tiny_run, tmp_path):
    from emoset_peft.cli import main
    from emoset_peft.engine.precision import decide_precision

    decision = decide_precision("bf16", CUDA)
    assert "GPU" in decision.reason  # the GPU rule, not a CPU flag
    expected = "bf16" if torch.cuda.is_bf16_supported() else "no"
    assert decision.resolved == expected, decision.reason
    assert (
        main(["train", *tiny_run("gpu", **{"cpu": "false", "train.mixed_precision": "bf16"})]) == 0
    )
    metrics = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    assert metrics["mixed_precision"] == expected and metrics["steps"] == 12
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_bf16_autocast_step_keeps_fp32_adapters_and_finite_gradients(tiny_vit_dir):
    from emoset_peft.engine.precision import cast_frozen_weights

    model = _trained_looking(tiny_vit_dir).to(CUDA).train()
    cast_frozen_weights(model, torch.bfloat16)
    pixels = torch.randn(4, 3, 32, 32, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(pixel_values=pixels).logits
    assert logits.dtype == torch.bfloat16
    torch.nn.functional.cross_entropy(logits.float(), torch.arange(4, device=CUDA)).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


def test_fused_adamw_matches_the_reference_implementation(tiny_vit_dir):
    runs = []
    for fused in (True, False):
        model = _trained_looking(tiny_vit_dir).to(CUDA).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=1e-2, weight_decay=0.01, fused=fused, foreach=None if fused else False
        )
        pixels = torch.randn(
            4, 3, 32, 32, device=CUDA, generator=torch.Generator(CUDA).manual_seed(0)
        )
        for _ in range(3):
            optimizer.zero_grad()
            model.eval()  # no dropout: both runs see the same gradients
            model(pixel_values=pixels).logits.square().mean().backward()
            optimizer.step()
        runs.append([p.detach().clone() for p in params])
    for fused_param, reference in zip(*runs):
        torch.testing.assert_close(fused_param, reference, atol=1e-5, rtol=1e-4)


def test_pinned_memory_and_non_blocking_copies_give_the_host_pixels():
    from emoset_peft.data.pipeline import Normalizer

    pixels = np.random.default_rng(0).integers(0, 256, (8, 37, 37, 3), dtype=np.uint8)
    on_gpu = Normalizer(MEAN, STD, CUDA).to_nchw(pixels)
    on_cpu = Normalizer(MEAN, STD, torch.device("cpu")).to_nchw(pixels)
    torch.cuda.synchronize()
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8
    assert torch.equal(on_gpu.cpu(), on_cpu)
    assert torch.from_numpy(pixels).pin_memory().is_pinned()


def test_batch_augmentation_on_the_device_matches_the_cpu(tmp_path, training_root):
    from emoset_peft.data.emoset import load_emoset
    from emoset_peft.data.pipeline import Normalizer, TrainStream, decode_split

    images = decode_split(
        load_emoset(training_root, cache_dir=tmp_path)["train"],
        32,
        cache_dir=tmp_path,
        show_progress=False,
    )
    batches = {}
    for device in (CUDA, torch.device("cpu")):
        stream = TrainStream(images, batch_size=16, seed=3)
        batches[device.type] = stream.batch(5, Normalizer(MEAN, STD, device), 32)
    (x_gpu, y_gpu), (x_cpu, y_cpu) = batches["cuda"], batches["cpu"]
    assert x_gpu.device.type == "cuda" and torch.equal(y_gpu.cpu(), y_cpu)
    # Same crops and flips (drawn on the host); the antialiased resize may round differently.
    grey_level = 1 / (255 * STD[0])
    difference = (x_gpu.cpu() - x_cpu).abs()
    assert difference.max() <= 3 * grey_level and difference.mean() <= 0.5 * grey_level


def test_folded_adapters_on_the_gpu_give_the_unmerged_logits_and_restore_weights(tiny_vit_dir):
    from emoset_peft.engine.precision import cast_frozen_weights
    from emoset_peft.models.merging import merged_for_inference

    model = _trained_looking(tiny_vit_dir).to(CUDA).eval()
    cast_frozen_weights(model, torch.bfloat16)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pixels = torch.randn(6, 3, 32, 32, device=CUDA)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        unmerged = model(pixel_values=pixels).logits.float()
        with merged_for_inference(model) as folded:
            merged = model(pixel_values=pixels).logits.float()
    assert folded >= 2
    torch.testing.assert_close(merged, unmerged, atol=3e-2, rtol=3e-2)  # bf16 weights
    for name, param in model.named_parameters():
        assert param.device.type == "cuda" and torch.equal(param, before[name]), name


def test_4bit_lora_forward_and_backward_on_the_gpu(tiny_vit_dir):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    from emoset_peft.models import build_model

    torch.manual_seed(0)
    model = build_model(tiny_vit_dir, "lora", quantize="4bit").to(CUDA).train()
    quantized = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert quantized and all(m.weight.device.type == "cuda" for m in quantized)
    pixels = torch.randn(4, 3, 32, 32, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(pixel_values=pixels).logits
    torch.nn.functional.cross_entropy(logits.float(), torch.arange(4, device=CUDA)).backward()
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora)
    assert any(p.grad.abs().sum() > 0 for p in lora)
