"""The training loop in parts (issue 12, item 4): LoopState as the checkpoint schema, losses read
at intervals from the device, and the parts of TrainingLoop used one by one."""

from __future__ import annotations

import json
import math

import pytest
import torch

from emoset_peft.config import load_config
from emoset_peft.engine.loop_state import LoopState
from emoset_peft.engine.loss_window import LossWindow, TrainingDiverged
from emoset_peft.engine.solo import SoloAccelerator


def test_loop_state_round_trips_through_json():
    state = LoopState(
        step=8,
        best_step=6,
        best_score=-0.5,
        best_validation={"accuracy": 0.25, "per_class": {"awe": 0.5}},
        evals_since_best=1,
        history=[{"step": 6, "val_loss": 0.5}],
        train_seconds=1.5,
    )
    assert LoopState.from_json(state.to_json()) == state
    fresh = LoopState.from_json(LoopState().to_json())  # -inf survives as -Infinity
    assert fresh == LoopState() and fresh.best_score == -math.inf


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"step": 3}),  # keys missing
        LoopState().to_json()[:-1] + ', "extra": 1}',  # a key this version does not know
        json.dumps([1, 2]),
        LoopState().to_json().replace('"history": []', '"history": 5'),
    ],
)
def test_loop_state_refuses_what_it_did_not_write(text):
    with pytest.raises((ValueError, TypeError)):
        LoopState.from_json(text)


def test_improved_tracks_the_best_evaluation():
    state = LoopState()
    assert state.improved(2, 0.4, {"accuracy": 0.4})
    assert not state.improved(4, 0.3, {"accuracy": 0.3})
    assert state.improved(6, 0.5, {"accuracy": 0.5})
    assert (state.best_step, state.best_score, state.evals_since_best) == (6, 0.5, 0)
    assert not state.improved(8, 0.5, {})
    assert state.evals_since_best == 1


def _window(**train):
    cfg = load_config(overrides=[f"train.{key}={value}" for key, value in train.items()]).train
    return LossWindow(SoloAccelerator(torch.device("cpu")), cfg)


def test_loss_window_reads_the_mean_since_the_last_read():
    window = _window()
    assert window.read() is None
    for step, loss in enumerate([1.0, 2.0, 4.0 / 3], start=1):
        window.add(step, torch.tensor(loss), torch.tensor(0.5))
    assert window.read() == pytest.approx(13 / 9)
    window.add(4, torch.tensor(0.25), None)
    assert window.read() == pytest.approx(0.25)
    assert window.read() is None


def test_loss_window_names_the_first_non_finite_step_when_read_later():
    window = _window(lr=0.5)
    window.add(1, torch.tensor(1.0), torch.tensor(2.0))
    window.add(2, torch.tensor(1.5), torch.tensor(math.inf))  # clipped: the norm counts
    window.add(3, torch.tensor(math.nan), torch.tensor(math.nan))
    with pytest.raises(TrainingDiverged) as caught:
        window.read()
    line = str(caught.value)
    assert "diverged at step 2: loss 1.5, gradient norm inf" in line and "train.lr" in line
    assert "\n" not in line


def test_loss_window_without_clipping_checks_the_loss_only():
    window = _window(max_grad_norm="null")
    window.add(1, torch.tensor(1.0), None)
    window.add(2, torch.tensor(math.inf), None)
    with pytest.raises(TrainingDiverged, match="diverged at step 2: loss inf;"):
        window.read()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_loop_parts_run_one_by_one(tiny_run, tmp_path):
    from emoset_peft.data.pipeline import Normalizer
    from emoset_peft.data.run_data import load_run_data
    from emoset_peft.engine.recipe import build_run_model
    from emoset_peft.engine.trainer import TrainingLoop
    from emoset_peft.models import input_spec

    config = load_config(overrides=tiny_run("parts"))
    data = load_run_data(config.data, 32, show_progress=False)
    model = build_run_model(config, data.class_names, 12)
    spec = input_spec(model)
    accelerator = SoloAccelerator(torch.device("cpu"))
    out = tmp_path / "parts"
    out.mkdir()  # the recipe makes it; fit writes into it
    loop = TrainingLoop(
        model,
        data,
        config.train,
        accelerator,
        Normalizer(spec.mean, spec.std, accelerator.device),
        spec.image_size,
        out_dir=out,
    )
    assert loop.total_steps == 12 and loop.state == LoopState()
    loop.train_step()
    loop.train_step()
    assert loop.state.step == 2 and loop.losses.steps == 2
    assert math.isfinite(loop.read_losses()) and loop.losses.steps == 0
    assert loop.select() is False  # no patience configured
    assert loop.state.best_step == 2 and loop.best_weights is not None
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(entry["step"], "train_loss" in entry) for entry in log] == [(2, True), (2, False)]
    result = loop.run(show_progress=False)
    assert result.steps == 12 and len(result.history) == 3  # steps 2 (above), 6 and 12
