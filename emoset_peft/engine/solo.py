"""A one-process stand-in for ``accelerate.Accelerator``, for study cells trained by one process.

Under ``accelerate launch --num_processes N`` a study gives each process its own cells. The real
Accelerator would wrap every model in DDP across all N processes, and a cell trained by one of
them would wait forever for the others' gradients. This class offers the part of the Accelerator
interface that the training loop uses, on this process's device alone, including the trackers
(``train.report_to``): the cell's own tracker run (``engine/tracking.py``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from emoset_peft.engine.precision import precision_dtype
from emoset_peft.errors import EmoSetError


class SoloAccelerator:
    process_index = 0
    num_processes = 1
    is_main_process = True
    distributed_type = "NO"  # as accelerate's DistributedType.NO, a str enum

    def __init__(
        self,
        device: torch.device,
        mixed_precision: str = "no",
        log_with: list | None = None,
        logging_dir: Path | None = None,
    ):
        self.device = device
        self.log_with = log_with or None  # trackers (engine/tracking.log_with), as the Accelerator
        self.logging_dir = logging_dir
        self.trackers = []
        self.mixed_precision = mixed_precision
        self._dtype = precision_dtype(mixed_precision)
        self._scaler = torch.amp.GradScaler(device.type) if mixed_precision == "fp16" else None

    def prepare(self, *objects):
        prepared = []
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                obj = obj.to(self.device)
            elif self._scaler is not None and isinstance(obj, torch.optim.Optimizer):
                self._optimizer = obj
                obj = _ScaledOptimizer(obj, self._scaler)
            prepared.append(obj)
        return prepared[0] if len(prepared) == 1 else prepared

    def autocast(self):
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self._scaler.scale(loss) if self._scaler else loss).backward()

    def clip_grad_norm_(self, params, max_norm: float):
        if self._scaler is not None:
            self._scaler.unscale_(self._optimizer)  # clip the true gradients, not scaled ones
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm)

    def unwrap_model(self, model):
        return model

    def no_sync(self, model):
        return contextlib.nullcontext()

    def register_for_checkpointing(self, *objects) -> None:
        raise EmoSetError(
            "train.checkpoint_every does not apply to study cells: a study resumes "
            "by skipping finished cells; remove it from the study's base recipe"
        )

    def init_trackers(self, project_name: str, config: dict | None = None) -> None:
        from emoset_peft.engine.tracking import start_cell_trackers

        self.trackers = start_cell_trackers(self.log_with, self.logging_dir, project_name, config)

    def log(self, values, step=None) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def wait_for_everyone(self) -> None:
        pass

    def end_training(self) -> None:
        from emoset_peft.engine.tracking import end_trackers

        end_trackers(self)

    def free_memory(self) -> None:
        pass


class _ScaledOptimizer:
    """fp16: the scaler skips a step whose gradients overflowed and adapts its scale."""

    def __init__(self, optimizer, scaler):
        self.optimizer, self.scaler = optimizer, scaler

    def step(self):
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)
