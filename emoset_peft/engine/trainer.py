"""The training loop: accelerate's shape (prepare, backward, clip, step), step-indexed data.

Honest model selection: the loop evaluates on the validation *selection set* only, keeps the
trainable weights of the best evaluation in memory, stops early after ``patience`` evaluations
without improvement, and restores the best weights at the end. The test split is never touched
here; the recipe scores it exactly once, afterwards. Each evaluation's predictions are kept in
``selection/step_<N>.csv``, so another selection rule can be applied later without retraining.
With no selection set (``data.selection=none``) the loop trains the whole budget and keeps the
last step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from emoset_peft.config import TrainConfig
from emoset_peft.data.pipeline import Normalizer, TrainStream
from emoset_peft.data.run_data import RunData
from emoset_peft.engine.checkpoint import load_checkpoint, save_checkpoint
from emoset_peft.engine.evaluate import evaluate
from emoset_peft.engine.loop_state import (
    LoopState,
    load_trainable_state,
    trainable_state,
)
from emoset_peft.engine.loss_window import (
    LossWindow,
    TrainingDiverged,
    diverged_message,
)
from emoset_peft.metrics.registry import log_entry, selection_score
from emoset_peft.utils.io import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    steps: int  # optimizer steps taken in total (across resumes)
    best_step: int
    best_validation: dict | None  # None: no selection set, the last step is kept
    train_seconds: float  # wall seconds of the loop less its selection evaluations
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    selection_seconds: float = 0.0  # wall seconds of the selection evaluations


LOG_EVERY = 5  # optimizer steps between reads of the loss (a host sync) for the log and the bar


def step_budget(num_images: int, per_process_batch: int, world_size: int, cfg: TrainConfig) -> int:
    """Optimizer steps for a subset: ``epochs`` passes, at least ``min_steps``, at most ``max_steps``.

    e.g. k=16: 8 classes x 16 = 128 images, batch 32 -> 4 steps/epoch x 30 epochs = 120 steps;
    k=1: 8 images -> 1 step/epoch x 30 = 30 -> raised to min_steps (60).
    epochs=0 with max_steps=N: exactly N steps, whatever min_steps says.
    """
    if cfg.epochs == 0 and cfg.max_steps is not None:
        return cfg.max_steps
    images_per_step = per_process_batch * world_size * cfg.grad_accum
    steps = math.ceil(cfg.epochs * num_images / images_per_step)
    steps = max(steps, cfg.min_steps)
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    return steps


def build_optimizer(model, cfg: TrainConfig, device: torch.device):
    """AdamW over the trainable parameters; returns (optimizer, those parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases, norms, scalars
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        fused=device.type == "cuda",
    )
    return optimizer, params


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """Cosine decay after a linear warmup. Not passed to ``accelerator.prepare``: accelerate
    would step it once per process per step."""
    return get_cosine_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps
    )


def compile_model(model) -> None:
    """torch.compile in place: parameter names, state_dict and save_pretrained unchanged."""
    # Measured with ViT-S/16 + LoRA on 2 CPU cores: 0.95x eager in fp32 on an AVX2 EPYC
    # (75 s compile), 0.80x of the fast-kernel eager step in bf16 on an AMX Xeon (29 s).
    # There inductor's in-graph dropout RNG is the cost: without dropout it runs 1.13x eager.
    log.info(
        "train.compile=true: compiling the model with torch.compile; the first step "
        "and the first evaluation are slow while it compiles (about a minute on a "
        "2-core CPU)"
    )
    model.compile()


def fit(
    model,
    data: RunData,
    cfg: TrainConfig,
    accelerator,
    normalizer: Normalizer,
    image_size: int,
    *,
    out_dir: Path | None = None,
    resume_from: Path | None = None,
    show_progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    stream_class: type = TrainStream,
) -> FitResult:
    """Train ``model`` (already built, not yet prepared) on ``data.train``; returns the result.

    The model comes back unwrapped-compatible: its trainable weights are the selected ones.
    ``on_step(step, seconds)``, if given, is called after every optimizer step with the steps
    done so far and that step's wall seconds (data, forward, backward, update; no evaluation or
    checkpointing), e.g. to measure throughput. On a GPU the step's kernels may still be
    running then: call ``torch.cuda.synchronize()`` in it to time them. ``stream_class``: the
    ``TrainStream`` (sub)class that makes each step's batch (engine/features.py: feature rows).
    """
    loop = TrainingLoop(
        model,
        data,
        cfg,
        accelerator,
        normalizer,
        image_size,
        out_dir=out_dir,
        stream_class=stream_class,
    )
    if resume_from is not None:
        loop.resume(resume_from)
    return loop.run(show_progress=show_progress, on_step=on_step)


class TrainingLoop:
    """One ``fit`` call in parts: setup (here), ``train_step``, ``select``, ``checkpoint``."""

    def __init__(
        self,
        model,
        data: RunData,
        cfg: TrainConfig,
        accelerator,
        normalizer: Normalizer,
        image_size: int,
        *,
        out_dir: Path | None = None,
        stream_class: type = TrainStream,
    ):
        self.data, self.cfg, self.accelerator = data, cfg, accelerator
        self.normalizer, self.image_size, self.out_dir = normalizer, image_size, out_dir
        self.writes = out_dir is not None and accelerator.is_main_process
        self.stream = stream_class(
            data.train,
            cfg.batch_size,
            seed=cfg.seed,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
        self.total_steps = step_budget(
            len(data.train), self.stream.per_process, accelerator.num_processes, cfg
        )
        self.eval_every = cfg.eval_every or max(1, self.total_steps // 10)
        optimizer, self.params = build_optimizer(model, cfg, accelerator.device)
        self.scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        if cfg.compile:
            compile_model(model)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.state = LoopState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.losses = LossWindow(accelerator, cfg)
        self.images_seen = 0  # since the last progress line, all processes
        self.step_seconds = 0.0  # wall seconds in train_step since then (no evals, checkpoints)

    def resume(self, checkpoint: Path) -> None:
        self.state, self.best_weights = load_checkpoint(
            self.accelerator,
            checkpoint,
            model=self.unwrapped,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
        )
        log.info("resumed from %s at step %d", checkpoint, self.state.step)
        if self.writes:  # drop what was logged after the checkpoint
            log_path = self.out_dir / "log.jsonl"
            kept = [e for e in train_log_entries(log_path) if e["step"] <= self.state.step]
            entries = sorted(kept + self.state.history, key=lambda entry: entry["step"])
            atomic_write_text(log_path, "".join(json.dumps(entry) + "\n" for entry in entries))

    def train_step(self) -> None:
        """One optimizer step: ``grad_accum`` micro-batches, clipping, update, method hooks."""
        from emoset_peft.models import after_optimizer_step, extra_loss

        cfg, accelerator, step = self.cfg, self.accelerator, self.state.step
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum):
            pixels, labels = self.stream.batch(
                step * cfg.grad_accum + micro, self.normalizer, self.image_size
            )
            sync = micro == cfg.grad_accum - 1
            with _maybe_no_sync(accelerator, self.model, sync), accelerator.autocast():
                logits = self.model(pixel_values=pixels).logits
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
                loss = loss + extra_loss(self.model)
                accelerator.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach() / cfg.grad_accum  # stays on the device
            self.images_seen += len(labels) * accelerator.num_processes
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.losses.add(step + 1, loss_sum, grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        after_optimizer_step(self.model, step)
        self.state.step = step + 1

    def read_losses(self) -> float | None:
        """Read the losses since the last read (TrainingDiverged if any was non-finite) and log
        their mean (trackers and a log.jsonl line); None when there were none."""
        steps = self.losses.steps
        mean = self.losses.read()
        if mean is not None:
            entry = {"train_loss": mean, "lr": self.scheduler.get_last_lr()[0]}
            self.accelerator.log(entry, step=self.state.step)
            if self.writes:  # the mean over the optimizer steps since the previous line
                line = {"step": self.state.step, **entry, "train_steps": steps}
                with open(self.out_dir / "log.jsonl", "a") as handle:
                    handle.write(json.dumps(line) + "\n")
        return mean

    def select(self) -> bool:
        """Evaluate on the selection set, keep the best weights; True when patience ran out."""
        cfg, data, state, step = self.cfg, self.data, self.state, self.state.step
        metrics, probs = evaluate(
            self.model,
            data.selection,
            data.class_names,
            self.accelerator,
            self.normalizer,
            self.image_size,
            cfg.eval_batch_size,
            merge_adapters=not cfg.compile,
        )
        if not math.isfinite(metrics["loss"]):  # weights blew up after the last checked step
            raise TrainingDiverged(
                diverged_message(step, f"validation loss {metrics['loss']}", cfg)
            )
        score = selection_score(metrics, cfg.select_metric)
        entry = {"step": step, **log_entry(metrics, "val")}
        state.history.append(entry)
        self.accelerator.log(entry, step=step)
        if state.improved(step, score, metrics):
            self.best_weights = trainable_state(self.unwrapped)
        if self.writes:
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            save_selection_predictions(self.out_dir, step, data, probs)
        return cfg.patience is not None and state.evals_since_best >= cfg.patience

    def checkpoint(self) -> None:
        save_checkpoint(
            self.accelerator,
            self.out_dir / "checkpoints",
            self.state.step,
            self.state,
            self.best_weights,
            model=self.unwrapped,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            keep=self.cfg.keep_checkpoints,
        )

    def run(
        self, *, show_progress: bool = True, on_step: Callable[[int, float], None] | None = None
    ) -> FitResult:
        cfg, state, total = self.cfg, self.state, self.total_steps
        bar = tqdm(
            total=total,
            initial=state.step,
            desc="train",
            unit="step",
            disable=not (show_progress and self.accelerator.is_main_process),
            leave=False,
        )
        self.model.train()
        stopped_early = False
        started = time.perf_counter() - state.train_seconds
        while state.step < total:
            step_started = time.perf_counter()
            self.train_step()
            step_seconds = time.perf_counter() - step_started
            self.step_seconds += step_seconds
            step = state.step
            if on_step is not None:
                on_step(step, step_seconds)
            bar.update(1)
            if step % LOG_EVERY == 0 or step == total:
                loss = self.read_losses()
                bar.set_postfix(
                    loss="n/a" if loss is None else f"{loss:.3f}",
                    lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                    img_s=images_per_second(self.images_seen, self.step_seconds),
                )
                self.images_seen, self.step_seconds = 0, 0.0
            if self.data.selection is not None and (step % self.eval_every == 0 or step == total):
                self.read_losses()  # never evaluate (or keep) weights from a non-finite step
                select_started = time.perf_counter()
                stopped_early = self.select()
                state.selection_seconds += time.perf_counter() - select_started
            state.train_seconds = time.perf_counter() - started
            if (
                cfg.checkpoint_every
                and self.out_dir is not None
                and (step % cfg.checkpoint_every == 0 and step < total)
            ):
                self.read_losses()
                self.checkpoint()
            if stopped_early:
                log.info(
                    "early stop at step %d: no improvement in %d evaluations", step, cfg.patience
                )
                break
        bar.close()
        self.read_losses()
        return self.result(stopped_early)

    def result(self, stopped_early: bool) -> FitResult:
        """Restore the selected weights; the last step's when there is no selection set."""
        state = self.state
        if self.best_weights is not None:
            load_trainable_state(self.unwrapped, self.best_weights)
        selected = self.data.selection is not None
        return FitResult(
            steps=state.step,
            best_step=state.best_step if selected else state.step,
            best_validation=state.best_validation if selected else None,
            train_seconds=max(0.0, state.train_seconds - state.selection_seconds),
            stopped_early=stopped_early,
            history=state.history,
            selection_seconds=state.selection_seconds,
        )


def images_per_second(images: int, seconds: float) -> str:
    """Training throughput for the progress bar, with 3 significant digits at any speed (a
    ViT-B step on a CPU takes seconds: 8 images in 12 s is 0.667, not 0)."""
    if seconds <= 0:
        return "n/a"
    rate = images / seconds
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def train_log_entries(path: Path) -> list[dict]:
    """The training-loss lines of a log.jsonl (lines cut short by a kill are skipped)."""
    entries = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "train_loss" in entry and "step" in entry:
                entries.append(entry)
    return entries


def selection_predictions_path(out_dir: Path, step: int) -> Path:
    """Where the selection set's predictions at ``step`` are kept (zero-padded: sorts by step)."""
    return out_dir / "selection" / f"step_{step:06d}.csv"


def save_selection_predictions(out_dir: Path, step: int, data: RunData, probs) -> None:
    from emoset_peft.engine.metrics import write_predictions

    write_predictions(
        selection_predictions_path(out_dir, step),
        data.selection.image_ids,
        data.selection.labels,
        probs,
        data.class_names,
    )


def _maybe_no_sync(accelerator, model, sync: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
    import contextlib

    return contextlib.nullcontext() if sync else accelerator.no_sync(model)
