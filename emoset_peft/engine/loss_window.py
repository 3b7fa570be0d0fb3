"""Training losses kept on the device and read only when needed, and the divergence check.

Reading a loss (``.item()``) makes the host wait for the device to finish every queued kernel.
The loop therefore adds each step's loss into device tensors and reads them once per log
interval, and before every evaluation and checkpoint (so nothing is evaluated or saved after a
non-finite step). The step where the loss (or gradient norm) first became non-finite is tracked
on the device too, so the error names it exactly even when it is read a few steps later.
"""

from __future__ import annotations

import math

import torch

from emoset_peft.errors import EmoSetError


class TrainingDiverged(EmoSetError):
    """A non-finite loss or gradient: the run stops and saves no adapter and no metrics."""


class LossWindow:
    """Sums of the losses since the last read, and the first non-finite step, on the device."""

    def __init__(self, accelerator, cfg):
        self.accelerator, self.cfg = accelerator, cfg
        self.device = accelerator.device
        # fp16's loss scaler skips steps whose gradients overflowed and lowers its scale: an
        # infinite gradient norm is routine there, so only the loss is checked.
        self.check_grads = str(accelerator.mixed_precision) != "fp16"
        self._reset()

    def _reset(self) -> None:
        self.total = torch.zeros((), device=self.device)
        self.steps = 0
        # [first non-finite step (0: none), its loss, its gradient norm (nan: not clipped)]
        self.first_bad = torch.zeros(3, device=self.device)

    def add(self, step: int, loss: torch.Tensor, grad_norm) -> None:
        """The mean loss of optimizer step ``step`` (1-based) and its gradient norm (or None)."""
        loss = loss.detach().float()
        norm = (
            torch.as_tensor(grad_norm, device=self.device).float()
            if grad_norm is not None
            else torch.full((), math.nan, device=self.device)
        )
        check = loss + 0 * norm if self.check_grads and grad_norm is not None else loss
        record = torch.stack([torch.full((), float(step), device=self.device), loss, norm])
        take = ~torch.isfinite(check) & (self.first_bad[0] == 0)  # stays on the device
        self.first_bad = torch.where(take, record, self.first_bad)
        self.total += loss
        self.steps += 1

    def read(self) -> float | None:
        """The mean loss over processes since the last read (None when no step was added);
        TrainingDiverged, on every process, when any process saw a non-finite step."""
        if self.steps == 0:
            return None
        packed = torch.cat([(self.total / self.steps).reshape(1), self.first_bad])
        if self.accelerator.num_processes > 1:  # every rank must stop together
            packed = self.accelerator.gather(packed.reshape(1, -1))
        rows = packed.reshape(-1, 4).cpu().tolist()  # the one host sync of the window
        self._reset()
        bad = [row for row in rows if row[1] > 0]
        if bad:
            _, step, loss, norm = min(bad, key=lambda row: row[1])
            what = (
                f"loss {loss}"
                if not math.isfinite(loss) or not self.cfg.max_grad_norm
                else f"loss {loss:.4g}, gradient norm {norm}"
            )
            raise TrainingDiverged(diverged_message(int(step), what, self.cfg))
        return sum(row[0] for row in rows) / len(rows)


def diverged_message(step: int, what: str, cfg) -> str:
    clip = (
        "a smaller train.max_grad_norm"
        if cfg.max_grad_norm
        else "gradient clipping (train.max_grad_norm=1.0)"
    )
    precision = ", or train.mixed_precision=no" if cfg.mixed_precision != "no" else ""
    return (
        f"training diverged at step {step}: {what}; nothing was saved. Try a lower train.lr "
        f"(now {cfg.lr:g}), {clip}{precision}"
    )
