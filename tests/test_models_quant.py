"""8-bit and 4-bit (NF4) backbones with LoRA on the CPU (bitsandbytes >= 0.45 runs both there)."""

import pytest
import torch

from emoset_peft.errors import EmoSetError
from emoset_peft.models import build_model, count_parameters, load_adapter


def quantized_layer_type(mode):
    import bitsandbytes as bnb

    return bnb.nn.Linear8bitLt if mode == "8bit" else bnb.nn.Linear4bit


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
@pytest.mark.parametrize("backbone", ["vit", "clip"])
def test_lora_on_a_quantized_backbone_trains(mode, backbone, tiny_backbones, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_backbones[backbone], "lora", quantize=mode)
    classifier = model.classifier_model
    layer_type = quantized_layer_type(mode)
    base_layers = [m for m in classifier.modules() if isinstance(m, layer_type)]
    assert base_layers, "nothing was quantized"
    # The head stays a full-precision nn.Linear (skipped from quantization), trained through modules_to_save.
    head = classifier.classifier.modules_to_save["default"]
    assert (
        type(head) is torch.nn.Linear
        and head.weight.dtype == torch.float32
        and head.weight.requires_grad
    )
    trainable, total = count_parameters(model)
    assert 0 < trainable < total

    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses

    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)  # quantizes the backbone again, the same way
    assert any(isinstance(m, layer_type) for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, expected)


def test_quantize_needs_a_method_with_quantized_layers(tiny_vit_dir):
    with pytest.raises(EmoSetError, match="does not fit method 'prefix'"):
        build_model(tiny_vit_dir, "prefix", quantize="4bit")
    with pytest.raises(EmoSetError, match="does not fit method 'dora'"):
        build_model(tiny_vit_dir, "dora", quantize="8bit")
    with pytest.raises(EmoSetError, match="choose one of 8bit, 4bit"):
        build_model(tiny_vit_dir, "lora", quantize="2bit")


def test_narrow_4bit_layers_keep_the_generic_cpu_kernel(tiny_vit_dir):
    # bitsandbytes' AVX512-BF16 repacking fails for in_features < 64 (the tiny ViT is 32 wide):
    # such layers must never take that path, whatever this CPU supports.
    import bitsandbytes as bnb

    model = build_model(tiny_vit_dir, "lora", quantize="4bit")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    narrow = [m for m in layers if m.in_features % 64]
    wide = [m for m in layers if not m.in_features % 64]  # the MLP's fc2 (64 -> 32)
    assert narrow and wide
    assert not any(m.support_avx512bf16_for_cpu for m in narrow)
    assert all(m.support_avx512bf16_for_cpu == bnb.functional.has_avx512bf16() for m in wide)


@pytest.mark.parametrize(("method", "mode"), [("ia3", "8bit"), ("adalora", "4bit")])
def test_merging_what_peft_cannot_fold_into_quantized_layers_is_one_line(
    tiny_vit_dir, method, mode
):
    """peft raises a ValueError (ia3) or an empty NotImplementedError (adalora); the model is
    left as it was."""
    model = build_model(tiny_vit_dir, method, quantize=mode, total_steps=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=x).logits
    with pytest.raises(EmoSetError) as caught:
        model.merge_and_unload()
    message = str(caught.value)
    assert "\n" not in message and f"method {method!r}" in message
    assert f"quantize={mode!r}" in message and "load_adapter" in message
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, before)
