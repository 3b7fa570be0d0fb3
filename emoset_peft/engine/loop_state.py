"""The training loop's own state: what a checkpoint's ``trainer_state.json`` holds.

``LoopState`` is the schema; ``to_json``/``from_json`` are the only way it is written and read,
so a field added here is saved and resumed without touching the checkpoint code. The trainable
weights (current and best) travel beside it as safetensors (engine/checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch

# Fields added after checkpoints were first written: an older trainer_state.json lacks them and
# resumes with their default.
LATER_FIELDS = {"selection_seconds"}


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done, across resumes
    best_step: int = -1  # step of the best evaluation so far; -1 before the first
    best_score: float = -math.inf  # the selection metric, higher is better (loss enters negated)
    best_validation: dict = field(default_factory=dict)  # the best evaluation's metrics
    evals_since_best: int = 0  # evaluations without improvement (for train.patience)
    history: list[dict] = field(default_factory=list)  # one entry per evaluation (log.jsonl val_*)
    train_seconds: float = 0.0  # wall seconds in the loop (selection included), across resumes
    selection_seconds: float = 0.0  # of which in selection evaluations, across resumes

    def improved(self, step: int, score: float, metrics: dict) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if score > self.best_score:
            self.best_score, self.best_step, self.best_validation = score, step, metrics
            self.evals_since_best = 0
            return True
        self.evals_since_best += 1
        return False

    def to_json(self) -> str:
        return json.dumps(
            dataclasses.asdict(self)
        )  # -inf is written as -Infinity (Python reads it)

    @classmethod
    def from_json(cls, text: str) -> LoopState:
        """The state ``to_json`` wrote; ValueError/TypeError for anything else."""
        raw = json.loads(text)
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(raw, dict) or not set(names) - LATER_FIELDS <= set(raw) <= set(names):
            found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"it holds {found}, expected the keys {names}")
        state = cls(**raw)
        if not (
            isinstance(state.step, int)
            and isinstance(state.history, list)
            and isinstance(state.best_validation, dict)
        ):
            raise TypeError("its step, history or best_validation has the wrong type")
        return state


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights that train (what selection keeps and a checkpoint saves)."""
    return {
        name: p.detach().to("cpu", copy=True)
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
