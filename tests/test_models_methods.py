"""Every registry entry x every tiny backbone family: train step, frozen base, save/load, merge, plain
PEFT loading. The matrix is generated from ``METHODS`` and what each entry says about itself, so a
new method is tested on every family without touching this file."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from emoset_peft.errors import EmoSetError
from emoset_peft.labels import EMOTIONS
from emoset_peft.models import (
    METHODS,
    after_optimizer_step,
    build_model,
    count_parameters,
    extra_loss,
    input_spec,
    load_adapter,
)
from emoset_peft.models.methods import get_method

FAMILIES = ("vit", "clip")  # the tiny_backbones fixture
TEXT_TOWER = ("clip",)  # families whose checkpoint can build a zero-shot text head
MATRIX = [
    (m, b) for m in METHODS for b in FAMILIES if b in TEXT_TOWER or not get_method(m).text_head
]
PEFT_METHODS = tuple(m for m in METHODS if get_method(m).plain_peft)
# AdaLoRA drops the ranks its budget pruned when saving: the same maths, summed in another order.
CLOSE_AFTER_RELOAD = ("adalora",)
BATCH = 4


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, 32, 32, generator=generator), torch.tensor([0, 3, 5, 7])


def build(method, folder, **options):
    torch.manual_seed(0)
    return build_model(folder, method, total_steps=20, **options)


def train(model, images, steps=2, lr=1e-2):
    """A few AdamW steps the way the trainer runs them (CE + extra_loss, AdaLoRA bookkeeping)."""
    x, y = images
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # zeroshot: nothing to train
        return model.eval()
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    for step in range(steps):
        logits = model(pixel_values=x).logits
        loss = torch.nn.functional.cross_entropy(logits, y) + extra_loss(model)
        loss.backward()
        optimizer.step()
        after_optimizer_step(model, step)
        optimizer.zero_grad()
    return model.eval()


def logits_of(model, images):
    with torch.no_grad():
        return model(pixel_values=images[0]).logits


@pytest.mark.parametrize("method,backbone", MATRIX)
def test_train_step_changes_only_method_parameters(method, backbone, tiny_backbones, images):
    model = build(method, tiny_backbones[backbone])
    out = model(pixel_values=images[0], labels=images[1])
    assert out.logits.shape == (BATCH, 8) and torch.isfinite(out.loss)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    spec = get_method(method)
    if not spec.trains:
        assert not trainable and count_parameters(model)[0] == 0
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, images, steps=1)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Everything else (the pretrained weights, buffers, the frozen original head) is bit-identical.
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    assert any(".classifier." in name for name in changed), "the head must train"
    if spec.freezes_backbone:
        assert not any(n.endswith(("q_proj.weight", "q_proj.base_layer.weight")) for n in changed)
    assert count_parameters(model)[0] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("method,backbone", MATRIX)
def test_save_then_load_gives_identical_logits(method, backbone, tiny_backbones, images, tmp_path):
    model = train(build(method, tiny_backbones[backbone]), images)
    expected = logits_of(model, images)
    model.save_pretrained(tmp_path)

    record = json.loads((tmp_path / "emoset_peft.json").read_text())
    assert record["method"] == method and record["format_version"] == 1
    assert record["backbone"] == str(tiny_backbones[backbone])
    assert [record["id2label"][str(i)] for i in range(8)] == list(EMOTIONS)
    assert not list(tmp_path.glob("*.bin")) and list(tmp_path.glob("*.safetensors"))
    json_files, weights = get_method(method).folder_files
    assert all((tmp_path / name).is_file() for name in (*json_files, weights))

    loaded = load_adapter(tmp_path)
    got = logits_of(loaded, images)
    if method in CLOSE_AFTER_RELOAD:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    else:
        assert torch.equal(got, expected)
    assert count_parameters(loaded) == count_parameters(model) and not loaded.training
    assert loaded.id2label == dict(enumerate(EMOTIONS))


@pytest.mark.parametrize("method,backbone", MATRIX)
def test_merge_and_unload_gives_a_plain_model_with_the_same_logits(
    method, backbone, tiny_backbones, images, tmp_path
):
    """Where the entry says mergeable; the others refuse with one line. (The in-place folding of
    ``merged_for_inference`` is tested for every folding entry in test_models_merging.py.)"""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import PreTrainedModel

    model = train(build(method, tiny_backbones[backbone]), images)
    if not get_method(method).mergeable:
        with pytest.raises(EmoSetError, match=f"method '{method}' .* cannot be merged"):
            model.merge_and_unload()
        return
    expected = logits_of(model, images)
    merged = model.merge_and_unload().eval()
    assert isinstance(merged, PreTrainedModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert merged.config.id2label == dict(enumerate(EMOTIONS))
    with torch.no_grad():
        torch.testing.assert_close(
            merged(pixel_values=images[0]).logits, expected, rtol=1e-5, atol=1e-5
        )
    if method != "lora":  # saving a merged model is the same for every method
        return
    merged.save_pretrained(tmp_path)
    reloaded = type(merged).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(
            reloaded(pixel_values=images[0]).logits, merged(pixel_values=images[0]).logits
        )


PLAIN_PEFT_CHECK = textwrap.dedent(
    """
    import json, re, sys
    from pathlib import Path
    import torch
    from safetensors.torch import load_file

    root = Path(sys.argv[1])
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        card = (folder / "README.md").read_text()
        code = re.search(r"## Loading without emoset_peft\\n\\n```python\\n(.*?)```", card, re.S).group(1)
        data = load_file(str(folder / "check.safetensors"))
        scope = {"ADAPTER_DIR": str(folder), "pixel_values": data["pixel_values"]}
        with torch.no_grad():
            exec(code, scope)
        diff = (scope["logits"] - data["logits"]).abs().max().item()
        assert diff <= 1e-6, (folder.name, diff)
        print(folder.name, "ok", diff)
    assert not any(name.startswith("emoset_peft") for name in sys.modules), "emoset_peft was imported"
    """
)


def test_peft_folders_load_with_plain_peft_in_a_fresh_process(
    tiny_backbones, tiny_clip_vision_dir, images, tmp_path
):
    """The recipe written into each folder's README runs without emoset_peft and gives the same logits."""
    from safetensors.torch import save_file

    cases = [(m, b, tiny_backbones[b]) for m in PEFT_METHODS for b in FAMILIES]
    cases.append(("lora", "clip_vision", tiny_clip_vision_dir))
    for method, name, folder in cases:
        model = train(build(method, folder), images)
        out = tmp_path / f"{method}-{name}"
        model.save_pretrained(out)
        save_file(
            {"pixel_values": images[0], "logits": logits_of(model, images)},
            str(out / "check.safetensors"),
        )
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT_CHECK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(" ok ") == len(cases)


def test_extra_loss_and_after_optimizer_step_unwrap_wrappers(tiny_vit_dir, images):
    class Wrapper(torch.nn.Module):  # what DDP and accelerate look like: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    adalora = Wrapper(build("adalora", tiny_vit_dir))
    regulariser = extra_loss(adalora)
    assert (
        isinstance(regulariser, torch.Tensor)
        and regulariser.item() > 0
        and regulariser.requires_grad
    )
    assert extra_loss(Wrapper(build("lora", tiny_vit_dir))) == 0.0
    with pytest.raises(EmoSetError, match="no backward pass yet"):
        after_optimizer_step(adalora, 0)
    after_optimizer_step(Wrapper(build("lora", tiny_vit_dir)), 0)  # no-op


def test_adalora_step_order_does_not_matter(tiny_vit_dir, images):
    """after_optimizer_step before or after zero_grad(set_to_none=True): the same rank allocation."""
    results = []
    for zero_grad_first in (False, True):
        model = build("adalora", tiny_vit_dir, r=2, init_r=4)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(12):
            model(pixel_values=images[0], labels=images[1]).loss.backward()
            optimizer.step()
            if zero_grad_first:
                optimizer.zero_grad(set_to_none=True)
            after_optimizer_step(model, step)
            optimizer.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in model.parameters())
        results.append(
            (model.network.peft_config["default"].rank_pattern, logits_of(model.eval(), images))
        )
    assert results[0][0] == results[1][0] and results[0][0]
    assert torch.equal(results[0][1], results[1][1])


def test_adalora_allocates_its_rank_budget(tiny_vit_dir, images):
    model = build("adalora", tiny_vit_dir, r=2, init_r=4)
    train(model, images, steps=20)
    config = model.network.peft_config["default"]
    assert config.rank_pattern, "update_and_allocate never ran"
    kept = sum(int(sum(mask)) for mask in config.rank_pattern.values())
    assert kept < 4 * len(config.rank_pattern)


def test_input_spec_from_the_preprocessor_and_fallbacks(tiny_vit_dir, tiny_clip_dir, tmp_path):
    import shutil

    vit = input_spec(build("linear", tiny_vit_dir))
    assert vit.image_size == 32 and vit.mean == (0.5, 0.5, 0.5)
    clip = input_spec(tiny_clip_dir)
    assert clip.image_size == 32 and clip.std[0] == pytest.approx(0.26862954)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_clip_dir, bare)
    (bare / "preprocessor_config.json").unlink()
    fallback = input_spec(bare)
    assert fallback.image_size == 32 and fallback.mean[0] == pytest.approx(0.48145466)


def test_count_parameters_per_method(tiny_vit_dir):
    linear = build("linear", tiny_vit_dir)
    head = linear.network.classifier
    assert count_parameters(linear) == (
        head.weight.numel() + head.bias.numel(),
        count_parameters(linear)[1],
    )
    full = build("full", tiny_vit_dir)
    assert count_parameters(full)[0] == count_parameters(full)[1] == count_parameters(linear)[1]


def test_custom_label_map_and_layer_subset(tiny_vit_dir, images, tmp_path):
    model = build_model(
        tiny_vit_dir, "lora", num_labels=2, id2label=["pos", "neg"], layers=[-1], targets=["q", "k"]
    )
    assert model.record["target_modules"] == [
        "vit.layers.1.attention.q_proj",
        "vit.layers.1.attention.k_proj",
    ]
    assert model(pixel_values=images[0]).logits.shape == (BATCH, 2)
    model.save_pretrained(tmp_path)
    assert load_adapter(tmp_path).config.id2label == {0: "pos", 1: "neg"}


@pytest.mark.parametrize(
    "method", ["lora", "ia3", "prefix", "vpt", "adaptformer", "bitfit", "full"]
)
def test_build_from_config_on_meta_counts_like_the_checkpoint(method, tiny_clip_dir):
    """The parameter table (benchmarks/count_params.py) builds from configs on the meta device."""
    from transformers import AutoConfig

    from emoset_peft.models import build_model_from_config

    with torch.device("meta"):
        from_config = build_model_from_config(AutoConfig.from_pretrained(tiny_clip_dir), method)
    assert next(from_config.parameters()).is_meta
    assert count_parameters(from_config) == count_parameters(build(method, tiny_clip_dir))
