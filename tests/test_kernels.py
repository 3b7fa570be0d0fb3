"""The fast CPU kernels compute the same thing: attention equals SDPA (values and gradients),
dropout keeps each element with the configured probability and is unbiased, and a model switched
to them gives the plain model's logits and gradients, for every attention-changing method."""

import json
import math

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from emoset_peft.models import build_model
from emoset_peft.models.kernels import (
    FAST_ATTENTION,
    FastDropout,
    enable_fast_kernels,
    fast_attention,
)


class _Layer(nn.Module):
    is_causal = False


def _qkv(dtype=torch.float32, batch=2, heads=3, tokens=17, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, tokens, dim, generator=generator).to(dtype).requires_grad_()
        for _ in range(3)
    ]


def _run(function, q, k, v, mask=None, autocast=False):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, _ = function(_Layer(), q, k, v, mask, scaling=q.shape[-1] ** -0.5)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    return out.float(), grads


@pytest.mark.parametrize("with_mask", [False, True])
def test_fast_attention_equals_sdpa_in_fp32(with_mask):
    q, k, v = _qkv()
    mask = torch.randn(2, 1, 17, 17) if with_mask else None
    out, grads = _run(fast_attention, q, k, v, mask)
    ref, ref_grads = _run(sdpa_attention_forward, q, k, v, mask)
    assert out.shape == ref.shape == (2, 17, 3, 8)  # [batch, tokens, heads, head_dim]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_fast_attention_under_bf16_autocast_is_as_exact_as_eager_attention():
    """bf16 scores and probabilities round like transformers' eager attention does; fused SDPA
    keeps them in fp32 and is about 2x closer to fp32. All three stay at bf16 rounding level."""
    from transformers.models.vit.modeling_vit import eager_attention_forward

    q, k, v = _qkv(torch.bfloat16, tokens=65, dim=16)
    exact, exact_grads = _run(
        sdpa_attention_forward, *(t.float().detach().requires_grad_() for t in (q, k, v))
    )

    def errors(function):
        out, grads = _run(function, q, k, v, autocast=True)
        grad_error = max(
            ((g.float() - e).norm() / e.norm()).item() for g, e in zip(grads, exact_grads)
        )
        return (out - exact).abs().max().item(), grad_error

    fast, eager = errors(fast_attention), errors(eager_attention_forward)
    assert fast[0] <= 1.05 * eager[0] and fast[1] <= 1.25 * eager[1]
    assert fast[0] < 2e-2 and fast[1] < 2e-2  # values ~N(0, 1): a few bf16 ulps


def test_fast_attention_leaves_inference_to_sdpa():
    q, k, v = (t.detach() for t in _qkv())
    with torch.no_grad():
        fast, _ = fast_attention(_Layer(), q, k, v, None)
        ref, _ = sdpa_attention_forward(_Layer(), q, k, v, None)
    assert torch.equal(fast, ref)


def test_fast_dropout_keeps_each_element_with_the_configured_probability():
    torch.manual_seed(0)
    layer = FastDropout(0.1).train()
    x = torch.ones(1_000_000)
    y = layer(x)
    drop = round(0.1 * 65536) / 65536  # what 16-bit masks can express
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - drop) < 5 * math.sqrt(drop * (1 - drop) / x.numel())
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - drop)))
    assert abs(y.mean().item() - 1.0) < 5e-3  # unbiased: E[y] = x
    # Neighbouring elements are independent (16-bit slices of one 64-bit word must not correlate).
    kept = (y != 0).float()
    assert abs(torch.corrcoef(torch.stack([kept[:-1], kept[1:]]))[0, 1].item()) < 0.01


def test_fast_dropout_follows_torch_seed_and_backpropagates_its_mask():
    x = torch.randn(4, 50, 32, requires_grad=True)
    layer = FastDropout(0.25).train()
    torch.manual_seed(3)
    first = layer(x)
    second = layer(x)
    torch.manual_seed(3)
    again = layer(x)
    assert torch.equal(first, again) and not torch.equal(first, second)
    (grad,) = torch.autograd.grad(first.sum(), x)
    scale = 65536 / (65536 - round(0.25 * 65536))
    assert torch.equal(grad, (first != 0).float() * scale)
    assert torch.equal(layer.eval()(x), x)


def test_fast_dropout_in_bf16_rounds_once_from_fp32():
    # What an fp32 dropout feeding a bf16 matmul gives: x * scale in fp32, rounded to bf16 once
    # (a bf16 mask would round the scale itself: 1/0.9 -> 1.109375, a 0.16% bias).
    torch.manual_seed(0)
    x = torch.randn(200_000).to(torch.bfloat16)
    y = FastDropout(0.1).train()(x)
    scale = 65536 / (65536 - round(0.1 * 65536))
    kept = y != 0
    assert y.dtype == torch.bfloat16 and 0.09 < 1 - kept.float().mean().item() < 0.11
    assert torch.equal(y[kept], (x[kept].float() * scale).to(torch.bfloat16))


def _build(folder, method, fast, **options):
    torch.manual_seed(0)
    model = build_model(folder, method, **options)
    return enable_fast_kernels(model) if fast else model


@pytest.mark.parametrize(
    "method,options", [("lora", {"dropout": 0.0}), ("prefix", {}), ("vpt", {}), ("full", {})]
)
@pytest.mark.parametrize("backbone", ["vit", "clip"])
def test_fast_model_gives_the_plain_logits_and_gradients(backbone, method, options, tiny_backbones):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    results = []
    for fast in (False, True):
        model = _build(tiny_backbones[backbone], method, fast, **options).train()
        logits = model(pixel_values=x).logits
        logits.square().sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((logits.detach(), grads, model))
    (plain, plain_grads, _), (fast, fast_grads, model) = results
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert plain_grads.keys() == fast_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)
    modules = list(model.modules())
    uses_fast = [
        m
        for m in modules
        if getattr(m, "config", None) is not None
        and getattr(m.config, "_attn_implementation", None) == FAST_ATTENTION
    ]
    inner = [m for m in modules if getattr(m, "emoset_inner_attention", None) == FAST_ATTENTION]
    assert inner if method == "prefix" else uses_fast, "no layer routes through the fast attention"


def test_under_autocast_lora_inputs_stay_bf16_and_logits_agree(tiny_vit_dir):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain = _build(tiny_vit_dir, "lora", False, dropout=0.0).train()
    fast = enable_fast_kernels(
        _build(tiny_vit_dir, "lora", False, dropout=0.0), autocast=True
    ).train()
    flags = [
        m.cast_input_dtype_enabled for m in fast.modules() if hasattr(m, "cast_input_dtype_enabled")
    ]
    assert flags and not any(flags)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = plain(pixel_values=x).logits, fast(pixel_values=x).logits
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_lora_dropout_is_swapped_and_the_saved_folder_is_unchanged(tiny_vit_dir, tmp_path):
    plain = _build(tiny_vit_dir, "lora", False, dropout=0.1)
    fast = _build(tiny_vit_dir, "lora", True, dropout=0.1)
    swapped = [m for m in fast.modules() if isinstance(m, FastDropout)]
    assert len(swapped) == sum(type(m) is nn.Dropout and m.p > 0 for m in plain.modules()) > 0
    plain.save_pretrained(tmp_path / "plain")
    fast.save_pretrained(tmp_path / "fast")
    for name in ("adapter_config.json", "emoset_peft.json"):
        assert json.loads((tmp_path / "fast" / name).read_text()) == json.loads(
            (tmp_path / "plain" / name).read_text()
        )
    assert FAST_ATTENTION not in "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "fast").iterdir()
    )


def test_clip_text_tower_keeps_its_attention(tiny_clip_dir):
    from transformers import CLIPModel

    model = enable_fast_kernels(CLIPModel.from_pretrained(tiny_clip_dir))
    configs = {
        type(m.config).__name__: m.config._attn_implementation
        for m in model.modules()
        if getattr(m, "config", None) is not None and hasattr(m.config, "_attn_implementation")
    }
    assert configs.get("CLIPTextConfig") == "sdpa"
    assert configs.get("CLIPVisionConfig") == FAST_ATTENTION


def test_eval_forward_batch_ignores_a_hosts_whole_l3(monkeypatch):
    from transformers import ViTConfig

    from emoset_peft.engine import evaluate

    vit_s = nn.Module()
    vit_s.config = ViTConfig(image_size=224, patch_size=16, hidden_size=384, intermediate_size=1536)
    monkeypatch.setattr(evaluate, "last_level_cache_bytes", lambda: 480 << 20)  # a VM's view
    assert evaluate.cpu_forward_batch(vit_s, 128) == 16
    monkeypatch.setattr(evaluate, "last_level_cache_bytes", lambda: 8 << 20)
    assert evaluate.cpu_forward_batch(vit_s, 128) == 4
