"""Prefix tuning and VPT: they change the outputs, learn, and survive checkpointing, bf16 and DDP."""

import pytest
import torch

from emoset_peft.models import build_model, load_adapter
from emoset_peft.models.prompts import prefix_attention

BACKBONES = ("vit", "clip")


def toy_task(n=16, classes=4, seed=0):
    """Noise images whose class is the bright quadrant."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randn(n, 3, 32, 32, generator=generator) * 0.5
    for i, c in enumerate(labels.tolist()):
        row, col = divmod(c, 2)
        images[i, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] += 2.0
    return images, labels


def build(method, folder, **options):
    torch.manual_seed(0)
    return build_model(folder, method, **options)


def method_parameters(model):
    """The prefix / prompt tensors (not the head)."""
    return [p for n, p in model.named_parameters() if n.startswith(("prefix.", "prompts."))]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_prefix_changes_the_outputs(backbone, tiny_backbones):
    model = build("prefix", tiny_backbones[backbone]).eval()
    x, _ = toy_task(4)
    with torch.no_grad():
        with_prefix = model(pixel_values=x).logits
        without = model.network(pixel_values=x).logits  # no emoset_prefix: plain attention
    assert not torch.allclose(with_prefix, without, atol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_vpt_changes_the_outputs_and_keeps_the_sequence_length(backbone, tiny_backbones):
    model = build("vpt", tiny_backbones[backbone]).eval()
    x, _ = toy_task(4)
    with torch.no_grad():
        out = model.network(pixel_values=x, output_hidden_states=True)
        with_prompts = model(pixel_values=x).logits
        model.prompts.detach()  # unhook: the plain backbone
        without = model(pixel_values=x).logits
    assert not torch.allclose(with_prompts, without, atol=1e-4)
    # 16 patches + [CLS]: the prompt tokens are gone again before pooling.
    assert out.logits.shape == (4, 8)
    assert out.hidden_states[-1].shape[1] == 17


@pytest.mark.parametrize("method", ["prefix", "vpt"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_prefix_and_vpt_learn_a_toy_task(method, backbone, tiny_backbones):
    model = build(method, tiny_backbones[backbone]).train()
    start = [p.detach().clone() for p in method_parameters(model)]
    x, y = toy_task()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=3e-2, weight_decay=0
    )
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method_parameters(model))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    moved = [
        (p - s).abs().max().item() for p, s in zip(method_parameters(model), start, strict=True)
    ]
    assert min(moved) > 1e-2


@pytest.mark.parametrize("method", ["prefix", "vpt", "lora"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(method, tiny_clip_dir):
    x, y = toy_task(4)
    grads, calls = {}, {}
    for checkpointing in (False, True):
        model = build(method, tiny_clip_dir, gradient_checkpointing=checkpointing).train()
        attention = model.classifier_model.vision_model.encoder.layers[0].self_attn
        count = []
        attention.register_forward_hook(lambda *_, count=count: count.append(1))
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
        loss.backward()
        calls[checkpointing] = len(count)
        grads[checkpointing] = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
        }
    assert calls == {False: 1, True: 2}  # the checkpointed layer ran again in the backward pass
    assert grads[False].keys() == grads[True].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["prefix", "vpt"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_bf16_autocast(method, backbone, tiny_backbones):
    model = build(method, tiny_backbones[backbone], gradient_checkpointing=True).train()
    x, y = toy_task(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(pixel_values=x).logits
    assert logits.dtype == torch.bfloat16
    torch.nn.functional.cross_entropy(logits.float(), y).backward()
    for param in method_parameters(model):
        assert (
            param.grad.dtype == torch.float32
            and torch.isfinite(param.grad).all()
            and param.grad.abs().sum() > 0
        )


@pytest.mark.parametrize("method", ["prefix", "vpt", "lora"])
def test_ddp_trains_like_the_plain_model(method, tiny_vit_dir, tmp_path):
    """DDP (gloo, one process) must see every trainable parameter used, and average nothing away."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    x, y = toy_task(4)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        results = []
        for wrap in (False, True):
            model = build(method, tiny_vit_dir, gradient_checkpointing=True).train()
            net = DistributedDataParallel(model) if wrap else model
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=1e-2
            )
            for _ in range(
                3
            ):  # DDP reports unused parameters at the step after the one missing them
                torch.nn.functional.cross_entropy(net(pixel_values=x).logits, y).backward()
                optimizer.step()
                optimizer.zero_grad()
            results.append(
                {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            )
    finally:
        dist.destroy_process_group()
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, msg=name)


@pytest.mark.parametrize(
    "method,options",
    [
        ("prefix", {"reparameterize": True, "reparam_hidden": 16, "prefix_length": 3}),
        ("prefix", {"layers": [-1]}),
        ("vpt", {"deep": False, "num_prompts": 2}),
    ],
)
def test_prefix_and_vpt_variants_save_and_load(method, options, tiny_clip_dir, tmp_path):
    model = build(method, tiny_clip_dir, **options)
    x, y = toy_task(4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, expected)


def test_prefix_length_sets_the_key_length(tiny_vit_dir):
    model = build("prefix", tiny_vit_dir, prefix_length=5, layers=[0])
    assert model.prefix().shape == (
        1,
        2,
        2,
        5,
        16,
    )  # 1 layer, k/v, 2 heads, 5 positions, head dim 16


def test_prefix_attention_with_an_eager_inner_function_matches_sdpa(tiny_vit_dir):
    model = build("prefix", tiny_vit_dir).eval()
    x, _ = toy_task(2)
    with torch.no_grad():
        sdpa = model(pixel_values=x).logits
        for layer in model.network.vit.layers:
            layer.attention.emoset_inner_attention = "eager"
        eager = model(pixel_values=x).logits
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
def test_prefix_attention_extends_a_padding_mask(mask_dtype):
    module = torch.nn.Module()
    module.is_causal, module.training = False, False
    module.emoset_layer_index, module.emoset_inner_attention = 0, "sdpa"
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    prefix = torch.randn(1, 2, 2, 3, 4)  # 1 layer, k/v, heads, 3 positions, head dim
    mask = (
        torch.zeros(2, 1, 5, 5)
        if mask_dtype == torch.float32
        else torch.ones(2, 1, 5, 5, dtype=torch.bool)
    )
    out, _ = prefix_attention(module, q, k, v, mask, emoset_prefix=prefix, scaling=0.5, dropout=0.0)
    reference, _ = prefix_attention(
        module, q, k, v, None, emoset_prefix=prefix, scaling=0.5, dropout=0.0
    )
    torch.testing.assert_close(out, reference)
    assert out.shape == (2, 5, 2, 4)
