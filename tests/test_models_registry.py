"""The method registry: BitFit and AdaptFormer as single entries, their options, and no method
name or kind compared outside the registry modules. (Training, saving, reloading and merging of
every entry on every tiny family: test_models_methods.py.)"""

import re
from pathlib import Path

import pytest
import torch

import emoset_peft
from emoset_peft.errors import EmoSetError
from emoset_peft.models import METHODS, build_model, count_parameters, load_adapter
from emoset_peft.models.methods import REGISTRY, get_method

PIXELS = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
REGISTRY_MODULES = ("methods.py", "kinds.py", "peft_methods.py", "options.py")


def _logits(model):
    with torch.no_grad():
        return model.eval()(pixel_values=PIXELS).logits


@pytest.mark.parametrize("backbone", ["vit", "clip"])
def test_bitfit_trains_exactly_the_biases_and_the_head(backbone, tiny_backbones, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_backbones[backbone], "bitfit")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert trainable == biases | {"network.classifier.weight"}
    assert any(".q_proj.bias" in n for n in trainable) and any(
        "layer" in n and "norm" in n for n in trainable
    )
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "adapter_model.safetensors"))) == trainable


@pytest.mark.parametrize("backbone", ["vit", "clip"])
def test_adaptformer_starts_as_the_plain_model_and_adds_one_adapter_per_mlp(
    backbone, tiny_backbones
):
    torch.manual_seed(0)
    linear = build_model(tiny_backbones[backbone], "linear")
    torch.manual_seed(0)
    adapted = build_model(tiny_backbones[backbone], "adaptformer", bottleneck=4, scale=0.5)
    # up-projections start at zero: the branch adds nothing until it trains
    assert torch.equal(_logits(adapted), _logits(linear))
    hidden = adapted.config.hidden_size
    assert [tuple(d.weight.shape) for d in adapted.adaptformer.down] == [(4, hidden)] * 2
    head = sum(p.numel() for p in adapted.network.classifier.parameters())
    per_layer = (hidden * 4 + 4) + (4 * hidden + hidden)
    assert count_parameters(adapted)[0] == head + 2 * per_layer
    last = build_model(tiny_backbones[backbone], "adaptformer", layers=[-1])
    assert len(last.adaptformer.down) == 1


def test_adaptformer_branch_is_added_to_the_mlp_output(tiny_vit_dir, tmp_path):
    """With up != 0 the MLP output gains scale * up(relu(down(x))) for its own input x."""
    model = build_model(tiny_vit_dir, "adaptformer", bottleneck=3, scale=0.25, layers=[0])
    adapter = model.adaptformer
    with torch.no_grad():
        adapter.up[0].weight.normal_()
    mlp = model.network.vit.layers[0].mlp
    x = torch.randn(2, 5, model.config.hidden_size)
    with torch.no_grad():
        branch = adapter.up[0](torch.relu(adapter.down[0](x)))
        torch.testing.assert_close(mlp(x), mlp.fc2(mlp.activation_fn(mlp.fc1(x))) + 0.25 * branch)
    model.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path)
    assert loaded.record["layers"] == [0] and len(loaded.adaptformer.down) == 1
    assert torch.equal(_logits(loaded), _logits(model))


@pytest.mark.parametrize(
    "options,match",
    [
        ({"bottleneck": 0}, "bottleneck=0 .*must be > 0"),
        ({"bottleneck": 2.5}, "bottleneck=2.5 should be an integer"),
        ({"scale": -1.0}, "scale=-1.0 .*must be > 0"),
        ({"scale": float("nan")}, "must be a finite number"),
        ({"dropout": 1.0}, r"must be in \[0, 1\)"),
        ({"rank": 4}, "no option.*rank.*its options: bottleneck, scale, dropout"),
    ],
)
def test_adaptformer_options_are_validated(options, match, tiny_vit_dir):
    with pytest.raises(EmoSetError, match=match):
        build_model(tiny_vit_dir, "adaptformer", **options)


def test_bitfit_and_adaptformer_refuse_what_they_do_not_take(tiny_vit_dir):
    with pytest.raises(EmoSetError, match="layers= applies to .*adaptformer.*method 'bitfit'"):
        build_model(tiny_vit_dir, "bitfit", layers=[0])
    with pytest.raises(EmoSetError, match="targets= only applies to the PEFT methods"):
        build_model(tiny_vit_dir, "adaptformer", targets=["q"])
    with pytest.raises(EmoSetError, match="does not fit method 'adaptformer'"):
        build_model(tiny_vit_dir, "adaptformer", quantize="4bit")


def test_every_entry_is_complete():
    for name in METHODS:
        spec = get_method(name)
        assert spec.name == name and spec.summary and spec.options is not None
        assert spec.folds <= spec.mergeable, name  # what folds in place also merges for good
        assert set(spec.quantize) <= {"8bit", "4bit"}
    assert list(REGISTRY) == list(METHODS)


def test_no_method_name_or_kind_compared_outside_the_registry():
    """The rule of models/methods.py: code asks an entry; it never compares a method name."""
    names = {*METHODS, *(get_method(m).kind for m in METHODS)}
    literal = "|".join(re.escape(n) for n in sorted(names))
    compared = re.compile(rf"""([!=]=|\bin)\s*\(?\s*["'](?:{literal})["']""")
    root = Path(emoset_peft.__file__).parent
    found = []
    for file in sorted(root.rglob("*.py")):
        if file.parent.name == "models" and file.name in REGISTRY_MODULES:
            continue
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if compared.search(line):
                found.append(f"{file.relative_to(root)}:{number}: {line.strip()}")
    assert not found, found


@pytest.mark.parametrize(
    "method,options", [("adaptformer", ["model.options.bottleneck=8"]), ("bitfit", [])]
)
def test_new_entries_train_through_the_cli(method, options, tiny_run, tmp_path):
    """A run of the new methods end to end: config validation, training, selection, saved adapter."""
    import json

    from emoset_peft.cli import main

    assert main(["train", *tiny_run("run", **{"model.method": method}), *options]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model = load_adapter(tmp_path / "run" / "adapter", trainable=True)
    assert model.method == method and metrics["steps"] == 12
    assert metrics["trainable_params"] == count_parameters(model)[0] > 0
