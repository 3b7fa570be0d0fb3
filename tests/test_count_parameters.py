"""``count_parameters`` on a model that ``load_adapter`` froze for inference: what its run trained."""

import json

import pytest

import emoset_peft as ep
from emoset_peft.cli import main


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_a_loaded_adapter_counts_what_its_run_trained(tiny_run, tmp_path, method):
    assert main(["train", "-q", *tiny_run("run", **{"model.method": method})]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    loaded = ep.load_adapter(tmp_path / "run")
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen for inference
    assert ep.count_parameters(loaded) == (metrics["trainable_params"], metrics["total_params"])
    assert metrics["trainable_params"] > 0
    again = ep.load_adapter(tmp_path / "run", trainable=True)
    assert ep.count_parameters(again)[0] == metrics["trainable_params"]

    # Saved again from the frozen model (export, push), the count stays the run's.
    loaded.save_pretrained(tmp_path / "copy")
    assert ep.count_parameters(ep.load_adapter(tmp_path / "copy"))[0] == metrics["trainable_params"]
