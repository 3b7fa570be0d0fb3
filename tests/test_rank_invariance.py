"""A global batch depends on (seed, step) only: how it is split across processes changes nothing."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_distributed import launch_two_cpu_processes
from two_processes import run_two_cpu_processes

from emoset_peft.cli import main
from emoset_peft.config import load_config
from emoset_peft.data import load_emoset
from emoset_peft.data.pipeline import Normalizer, TrainStream, decode_split

IMAGE_SIZE = 32


def test_global_batch_and_its_crops_do_not_depend_on_the_process_split(synthetic_root, tmp_path):
    split = load_emoset(synthetic_root, cache_dir=tmp_path)["train"]
    images = decode_split(split, IMAGE_SIZE, cache_dir=tmp_path, show_progress=False)
    normalizer = Normalizer((0.5,) * 3, (0.5,) * 3, torch.device("cpu"))

    def by_image(streams, step):
        """image index -> (crop, label) over all processes of one step."""
        rows = {}
        for stream in streams:
            pixels, labels = stream.batch(step, normalizer, IMAGE_SIZE)
            for index, crop, label in zip(np.sort(stream.indices(step)), pixels, labels):
                assert index not in rows
                rows[index] = (crop, label)
        return rows

    one = [TrainStream(images, batch_size=16, seed=5)]
    two = [TrainStream(images, batch_size=8, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert one[0].global_batch == two[0].global_batch == 16
    for step in (0, 3, 7):  # 64 images: step 3 ends a pass, step 7 is in the second
        single, split_in_two = by_image(one, step), by_image(two, step)
        assert sorted(single) == sorted(split_in_two) and len(single) == 16
        for index, (crop, label) in single.items():
            assert torch.equal(crop, split_in_two[index][0]), (step, index)
            assert label == split_in_two[index][1]


@pytest.mark.slow
def test_train_batch_size_is_the_global_batch_on_one_and_two_processes(tiny_run, tmp_path):
    """train.batch_size=16 on 1 process and on 2 (8 each): the same global batch, recorded as
    such, and the same adapter (LoRA without dropout: masks are drawn per process)."""
    common = {
        "cpu": "true",
        "train.min_steps": 4,
        "train.max_steps": 4,
        "train.eval_every": 4,
        "model.options.dropout": 0.0,
        "train.seed": 11,
        "train.batch_size": 16,
    }
    assert main(["train", *tiny_run("one", **common)]) == 0
    launch_two_cpu_processes("train", *tiny_run("two", **common))
    runs = {
        name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")
    }
    assert runs["two"]["num_processes"] == 2
    assert runs["one"]["global_batch"] == runs["two"]["global_batch"] == 16
    assert (runs["one"]["per_process_batch"], runs["two"]["per_process_batch"]) == (16, 8)
    for name in ("one", "two"):
        assert load_config(tmp_path / name / "config.yaml", []).train.batch_size == 16
    one = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert sorted(one) == sorted(two) and any("lora_B" in name for name in one)
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=0), (
            name,
            (one[name] - two[name]).abs().max().item(),
        )
    # And the LoRA weights really moved (a test on untrained adapters would prove nothing).
    assert max(t.abs().max().item() for n, t in one.items() if "lora_B" in n) > 1e-3


@pytest.mark.slow
def test_a_batch_size_two_processes_cannot_split_is_one_line_before_any_work(tiny_run, tmp_path):
    result = run_two_cpu_processes("train", *tiny_run("odd", cpu="true", **{"train.batch_size": 9}))
    assert result.returncode != 0
    # Each rank refuses on its own (both know the process count), so the line comes once or
    # twice: the launcher stops the other rank as soon as the first one exits.
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) in (1, 2) and len(set(errors)) == 1, result.stderr[-3000:]
    assert "train.batch_size=9" in errors[0] and "2 processes" in errors[0]
    assert "multiple of 2" in errors[0]
    assert "EmoSetError" not in result.stderr  # (the launcher's own traceback is not ours)
    assert not (tmp_path / "odd").exists()  # refused before the output folder was created
