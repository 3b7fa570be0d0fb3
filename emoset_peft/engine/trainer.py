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
from emoset_peft.errors import EmoSetError

log = logging.getLogger(__name__)


class TrainingDiverged(EmoSetError):
    """A non-finite loss or gradient: the run stops and saves no adapter and no metrics."""


@dataclass
class FitResult:
    steps: int  # optimizer steps taken in total (across resumes)
    best_step: int
    best_validation: dict | None  # None: no selection set, the last step is kept
    train_seconds: float
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    # Wall seconds of each optimizer step of this call (data + forward + backward + update; no
    # evaluation or checkpointing): steady-state throughput for benchmarks and logs.
    step_seconds: list[float] = field(default_factory=list)


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


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()
            if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def fit(model, data: RunData, cfg: TrainConfig, accelerator, normalizer: Normalizer,
        image_size: int, *, out_dir: Path | None = None, resume_from: Path | None = None,
        show_progress: bool = True) -> FitResult:
    """Train ``model`` (already built, not yet prepared) on ``data.train``; returns the result.

    The model comes back unwrapped-compatible: its trainable weights are the selected ones.
    """
    from emoset_peft.models import after_optimizer_step, extra_loss

    stream = TrainStream(data.train, cfg.batch_size, seed=cfg.seed,
                         rank=accelerator.process_index, world_size=accelerator.num_processes)
    total_steps = step_budget(len(data.train), stream.per_process, accelerator.num_processes, cfg)
    eval_every = cfg.eval_every or max(1, total_steps // 10)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases, norms, scalars
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, fused=accelerator.device.type == "cuda",
    )
    # Not passed to prepare(): accelerate would step it once per process per step.
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    if cfg.compile:
        # Measured with ViT-S/16 + LoRA on 2 CPU cores: 0.95x eager in fp32 on an AVX2 EPYC
        # (75 s compile), 0.80x of the fast-kernel eager step in bf16 on an AMX Xeon (29 s).
        # There inductor's in-graph dropout RNG is the cost: without dropout it runs 1.13x eager.
        log.info("train.compile=true: compiling the model with torch.compile; the first step "
                 "and the first evaluation are slow while it compiles (about a minute on a "
                 "2-core CPU)")
        model.compile()  # in place: parameter names, state_dict and save_pretrained unchanged
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    state = {"step": 0, "best_step": -1, "best_score": -math.inf, "best_validation": {},
             "evals_since_best": 0, "history": [], "train_seconds": 0.0}
    best_weights = None
    if resume_from is not None:
        state, best_weights = load_checkpoint(accelerator, resume_from, model=unwrapped,
                                              optimizer=optimizer, scheduler=scheduler)
        log.info("resumed from %s at step %d", resume_from, state["step"])
        if out_dir is not None and accelerator.is_main_process:  # drop evals after the checkpoint
            (out_dir / "log.jsonl").write_text(
                "".join(json.dumps(entry) + "\n" for entry in state["history"]))

    def select(step: int) -> bool:
        """Evaluate on the selection set; True when patience has run out."""
        nonlocal best_weights
        metrics, probs = evaluate(model, data.selection, data.class_names, accelerator,
                                  normalizer, image_size, cfg.eval_batch_size,
                                  merge_adapters=not cfg.compile)
        if not math.isfinite(metrics["loss"]):  # weights blew up after the last checked step
            raise TrainingDiverged(_diverged(step, f"validation loss {metrics['loss']}", cfg))
        score = -metrics["loss"] if cfg.select_metric == "loss" else metrics[cfg.select_metric]
        entry = {"step": step, "val_accuracy": metrics["accuracy"], "val_loss": metrics["loss"],
                 "val_macro_f1": metrics["macro_f1"]}
        state["history"].append(entry)
        accelerator.log(entry, step=step)
        if score > state["best_score"]:
            state.update(best_score=score, best_step=step, best_validation=metrics,
                         evals_since_best=0)
            best_weights = trainable_state(unwrapped)
        else:
            state["evals_since_best"] += 1
        if out_dir is not None and accelerator.is_main_process:
            with open(out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            save_selection_predictions(out_dir, step, data, probs)
        return cfg.patience is not None and state["evals_since_best"] >= cfg.patience

    bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step",
               disable=not (show_progress and accelerator.is_main_process), leave=False)
    model.train()
    stopped_early = False
    started = time.perf_counter() - state["train_seconds"]
    images_seen, window_start = 0, time.perf_counter()
    step_seconds = []
    while state["step"] < total_steps:
        step = state["step"]
        step_started = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum):
            pixels, labels = stream.batch(step * cfg.grad_accum + micro, normalizer, image_size)
            sync = micro == cfg.grad_accum - 1
            with _maybe_no_sync(accelerator, model, sync), accelerator.autocast():
                logits = model(pixel_values=pixels).logits
                loss = F.cross_entropy(logits.float(), labels,
                                       label_smoothing=cfg.label_smoothing)
                loss = loss + extra_loss(model)
                accelerator.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach() / cfg.grad_accum
            images_seen += len(labels) * accelerator.num_processes
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        loss_value = _checked_loss(loss_sum, grad_norm, accelerator, cfg, step + 1)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        after_optimizer_step(model, step)
        state["step"] = step = step + 1
        step_seconds.append(time.perf_counter() - step_started)

        bar.update(1)
        if step % 5 == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            img_s=f"{images_seen / max(elapsed, 1e-9):.0f}")
            accelerator.log({"train_loss": loss_value, "lr": scheduler.get_last_lr()[0]},
                            step=step)
            images_seen, window_start = 0, time.perf_counter()
        if data.selection is not None and (step % eval_every == 0 or step == total_steps):
            stopped_early = select(step)
        state["train_seconds"] = time.perf_counter() - started
        if cfg.checkpoint_every and out_dir is not None and (
                step % cfg.checkpoint_every == 0 and step < total_steps):
            save_checkpoint(accelerator, out_dir / "checkpoints", step, state, best_weights,
                            model=unwrapped, optimizer=optimizer, scheduler=scheduler,
                            keep=cfg.keep_checkpoints)
        if stopped_early:
            log.info("early stop at step %d: no improvement in %d evaluations", step,
                     cfg.patience)
            break
    bar.close()

    if data.selection is None:  # nothing to select on: the last step is the result
        state.update(best_step=state["step"], best_validation=None)
    if best_weights is not None:
        load_trainable_state(unwrapped, best_weights)
    return FitResult(steps=state["step"], best_step=state["best_step"],
                     best_validation=state["best_validation"],
                     train_seconds=state["train_seconds"], stopped_early=stopped_early,
                     history=state["history"], step_seconds=step_seconds)


def selection_predictions_path(out_dir: Path, step: int) -> Path:
    """Where the selection set's predictions at ``step`` are kept (zero-padded: sorts by step)."""
    return out_dir / "selection" / f"step_{step:06d}.csv"


def save_selection_predictions(out_dir: Path, step: int, data: RunData, probs) -> None:
    from emoset_peft.engine.metrics import write_predictions

    write_predictions(selection_predictions_path(out_dir, step), data.selection.image_ids,
                      data.selection.labels, probs, data.class_names)


def _checked_loss(loss_sum: torch.Tensor, grad_norm, accelerator, cfg: TrainConfig,
                  step: int) -> float:
    """The step's mean loss over processes, or TrainingDiverged before the optimizer applies a
    non-finite update. One host sync per step (the loss was read every micro-batch before)."""
    check = loss_sum.float()
    # fp16's loss scaler skips steps whose gradients overflowed and lowers its scale: an
    # infinite gradient norm is routine there, so only the loss is checked.
    if grad_norm is not None and str(accelerator.mixed_precision) != "fp16":
        check = check + 0 * torch.as_tensor(grad_norm, device=check.device).float()  # NaN/inf stay
    if accelerator.num_processes > 1:  # every rank must stop together, not only the one with NaN
        check = accelerator.reduce(check, reduction="mean")
    value = check.item()
    if math.isfinite(value):
        return value
    loss = loss_sum.item()
    what = f"loss {loss}" if not math.isfinite(loss) or grad_norm is None else \
        f"loss {loss:.4g}, gradient norm {float(grad_norm)}"
    raise TrainingDiverged(_diverged(step, what, cfg))


def _diverged(step: int, what: str, cfg: TrainConfig) -> str:
    clip = ("a smaller train.max_grad_norm" if cfg.max_grad_norm else
            "gradient clipping (train.max_grad_norm=1.0)")
    precision = ", or train.mixed_precision=no" if cfg.mixed_precision != "no" else ""
    return (f"training diverged at step {step}: {what}; nothing was saved. Try a lower train.lr "
            f"(now {cfg.lr:g}), {clip}{precision}")


def _maybe_no_sync(accelerator, model, sync: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
    import contextlib

    return contextlib.nullcontext() if sync else accelerator.no_sync(model)
