"""Adapters folded into the base weights for inference give the unmerged logits, and every weight
comes back bit for bit afterwards (also in bf16, where peft's unmerge would round), so training
goes on unchanged; methods with nothing to fold and quantized layers are left alone."""

import numpy as np
import pytest
import torch

from emoset_peft.data.pipeline import DecodedImages, Normalizer
from emoset_peft.engine.evaluate import predict_probs
from emoset_peft.engine.precision import cast_frozen_weights
from emoset_peft.engine.solo import SoloAccelerator
from emoset_peft.models import MERGEABLE, build_model
from emoset_peft.models.merging import mergeable_layers, merged_for_inference

PIXELS = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _trained_looking(backbone_dir, method):
    """A model whose adapters are not at their (often identity) initial values."""
    torch.manual_seed(0)
    options = {"total_steps": 50} if method == "adalora" else {}
    model = build_model(backbone_dir, method, **options)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _snapshot(model):
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _assert_unchanged(model, before):
    for name, param in model.named_parameters():
        assert param.dtype == before[name].dtype and torch.equal(param, before[name]), name


@pytest.mark.parametrize("method", MERGEABLE)
@pytest.mark.parametrize("backbone", ["vit", "clip"])
def test_folded_adapters_give_the_unmerged_logits_and_leave_every_weight(
    method, backbone, tiny_backbones
):
    model = _trained_looking(tiny_backbones[backbone], method)
    before = _snapshot(model)
    with torch.inference_mode():
        unmerged = model(pixel_values=PIXELS).logits
        with merged_for_inference(model) as folded:
            merged = model(pixel_values=PIXELS).logits
            assert all(layer.merged for layer in mergeable_layers_of(model, merged=True))
    assert folded >= 2  # every targeted projection (q and v, or k, v and fc2)
    torch.testing.assert_close(merged, unmerged, atol=2e-5, rtol=1e-4)
    _assert_unchanged(model, before)
    assert len(mergeable_layers(model)) == folded  # nothing is left marked as merged

    # Training goes on through the adapters: they receive gradients again.
    model.train()
    model(pixel_values=PIXELS).logits.square().sum().backward()
    adapter_grads = [
        p.grad
        for n, p in model.named_parameters()
        if p.requires_grad and "classifier" not in n and "head" not in n
    ]
    assert adapter_grads and any(g is not None and g.abs().sum() > 0 for g in adapter_grads)


def mergeable_layers_of(model, merged):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer) and m.merged == merged]


@pytest.mark.parametrize("method", ["prefix", "vpt", "linear", "full"])
def test_methods_without_adapter_weights_fold_nothing(method, tiny_vit_dir):
    model = _trained_looking(tiny_vit_dir, method)
    with torch.inference_mode(), merged_for_inference(model) as folded:
        model(pixel_values=PIXELS)
    assert folded == 0


def test_bf16_base_weights_come_back_exactly_after_many_evaluations(tiny_vit_dir):
    model = _trained_looking(tiny_vit_dir, "lora")
    cast_frozen_weights(model, torch.bfloat16)
    before = _snapshot(model)
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}
    for _ in range(5):
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16),
            merged_for_inference(model),
        ):
            model(pixel_values=PIXELS)
    _assert_unchanged(model, before)
    # Same storage too: an optimizer or a compiled graph holding the tensors sees them restored.
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == storage


def test_weights_are_restored_when_the_block_raises(tiny_vit_dir):
    model = _trained_looking(tiny_vit_dir, "lora")
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="interrupted"), merged_for_inference(model):
        raise RuntimeError("interrupted")
    _assert_unchanged(model, before)
    assert not mergeable_layers_of(model, merged=True)


def test_disabled_adapters_are_not_folded(tiny_vit_dir):
    model = _trained_looking(tiny_vit_dir, "lora")
    with model.network.disable_adapter(), torch.inference_mode():
        base_only = model(pixel_values=PIXELS).logits
        with merged_for_inference(model) as folded:
            assert folded == 0
            torch.testing.assert_close(model(pixel_values=PIXELS).logits, base_only)


def test_quantized_base_layers_are_not_folded(tiny_vit_dir):
    model = build_model(tiny_vit_dir, "lora", quantize="8bit")
    assert model.network.peft_config["default"].target_modules  # adapters exist ...
    assert mergeable_layers(model) == []  # ... but on bitsandbytes layers: left unmerged


def test_predict_probs_folds_adapters_and_matches_the_unmerged_scores(tiny_vit_dir):
    model = _trained_looking(tiny_vit_dir, "loha").train()
    before = _snapshot(model)
    images = DecodedImages(
        pixels=np.random.default_rng(0).integers(0, 256, (10, 37, 37, 3), dtype=np.uint8),
        labels=np.arange(10) % 8,
        image_ids=[f"img{i}" for i in range(10)],
    )
    accelerator = SoloAccelerator(torch.device("cpu"))
    normalizer = Normalizer((0.5,) * 3, (0.5,) * 3, accelerator.device)
    fast = predict_probs(model, images, accelerator, normalizer, 32, 4)
    plain = predict_probs(model, images, accelerator, normalizer, 32, 4, merge_adapters=False)
    assert fast.shape == (10, 8)
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    assert model.training  # its mode is given back
    _assert_unchanged(model, before)
