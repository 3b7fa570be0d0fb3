"""The plain path: what a user writes instead of emoset_peft, after peft's image-classification
example (examples/image_classification/image_classification_peft_lora.py in huggingface/peft).

A ``datasets`` split whose image column is decoded on access, torchvision transforms applied
per image in ``set_transform`` (train: RandomResizedCrop + RandomHorizontalFlip + ToTensor +
Normalize; eval: Resize + CenterCrop + ToTensor + Normalize), ``peft.get_peft_model`` with
``modules_to_save=["classifier"]``, and ``transformers.Trainer`` with the example's collate
function, ``use_cpu=True`` (unless ``--device cuda``) and ``bf16=True`` when asked. Nothing
here imports emoset_peft: the benchmarks give it a records file (image paths and labels per
split) and read one JSON line back.

    python benchmarks/plain_path.py train-throughput --backbone DIR --records R.json --steps 8
    python benchmarks/plain_path.py eval-throughput  --backbone DIR --records R.json
    python benchmarks/plain_path.py cell --backbone DIR --records R.json --method lora --steps 40 ...
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset, Image
from peft import IA3Config, LoHaConfig, LoraConfig, get_peft_model
from torchvision.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)


def load_split(records: dict, split: str) -> Dataset:
    rows = records["splits"][split]
    data = Dataset.from_dict({"image": [path for path, _ in rows], "label": [y for _, y in rows]})
    return data.cast_column("image", Image())  # decoded with PIL each time a row is read


def transforms(backbone: str):
    processor = AutoImageProcessor.from_pretrained(backbone)
    size = processor.size["height"]
    normalize = Normalize(mean=processor.image_mean, std=processor.image_std)
    train = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    val = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def preprocess_train(batch):
        batch["pixel_values"] = [train(image.convert("RGB")) for image in batch["image"]]
        return batch

    def preprocess_val(batch):
        batch["pixel_values"] = [val(image.convert("RGB")) for image in batch["image"]]
        return batch

    return preprocess_train, preprocess_val


def collate_fn(examples):
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["label"] for example in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def compute_metrics(eval_pred):
    predictions = np.argmax(eval_pred.predictions, axis=1)
    return {"accuracy": float((predictions == eval_pred.label_ids).mean())}


def build_model(
    backbone: str, class_names: list[str], method: str, r: int, alpha: float, dropout: float
):
    id2label = dict(enumerate(class_names))
    model = AutoModelForImageClassification.from_pretrained(
        backbone,
        label2id={v: k for k, v in id2label.items()},
        id2label=id2label,
        ignore_mismatched_sizes=True,
    )
    if method == "lora":
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=dropout,
            bias="none",
            modules_to_save=["classifier"],
        )
    elif method == "ia3":
        config = IA3Config(
            target_modules=["k_proj", "v_proj", "fc2"],
            feedforward_modules=["fc2"],
            modules_to_save=["classifier"],
        )
    elif method == "loha":
        config = LoHaConfig(
            r=r, alpha=alpha, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]
        )
    else:
        raise SystemExit(f"unknown method {method}")
    return get_peft_model(model, config)


class StepTimes(TrainerCallback):
    """Wall time between consecutive optimizer steps (data loading included)."""

    def __init__(self):
        self.seconds, self.last = [], None

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():  # the step's kernels are queued: wait for them
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def training_args(out: str, a, **extra) -> TrainingArguments:
    return TrainingArguments(
        out,
        remove_unused_columns=False,
        learning_rate=a.lr,
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.eval_batch_size,
        bf16=a.precision == "bf16",
        use_cpu=a.device == "cpu",
        max_steps=a.steps,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        weight_decay=0.01,
        max_grad_norm=1.0,
        label_names=["labels"],
        report_to="none",
        disable_tqdm=True,
        seed=a.seed,
        logging_steps=50,
        **extra,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["train-throughput", "eval-throughput", "cell"])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--records", required=True)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=None, help="first N test images")
    parser.add_argument("--warmup-images", type=int, default=32)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = parser.parse_args(argv)

    started = time.perf_counter()
    records = json.loads(open(a.records).read())
    preprocess_train, preprocess_val = transforms(a.backbone)
    set_seed(a.seed)
    model = build_model(a.backbone, records["class_names"], a.method, a.r, a.alpha, a.dropout)
    result = {"mode": a.mode, "precision": a.precision}
    with tempfile.TemporaryDirectory() as out:
        if a.mode == "train-throughput":
            train = load_split(records, "train")
            train.set_transform(preprocess_train)
            times = StepTimes()
            trainer = Trainer(
                model,
                training_args(out, a, save_strategy="no"),
                train_dataset=train,
                data_collator=collate_fn,
                callbacks=[times],
            )
            trainer.train()
            result.update(step_seconds=times.seconds, batch_size=a.batch_size)
        elif a.mode == "eval-throughput":
            test = load_split(records, "test")
            if a.eval_images:
                test = test.select(range(min(a.eval_images, len(test))))
            test.set_transform(preprocess_val)
            trainer = Trainer(
                model,
                training_args(out, a),
                data_collator=collate_fn,
                compute_metrics=compute_metrics,
            )
            trainer.evaluate(test.select(range(a.warmup_images)))  # warm-up, not timed
            tick = time.perf_counter()
            metrics = trainer.evaluate(test)
            result.update(
                seconds=time.perf_counter() - tick,
                images=len(test),
                accuracy=metrics["eval_accuracy"],
            )
        else:  # one study cell: train, pick the best checkpoint on validation, test once
            train, val, test = (load_split(records, s) for s in ("train", "validation", "test"))
            train.set_transform(preprocess_train)
            val.set_transform(preprocess_val)
            test.set_transform(preprocess_val)
            args = training_args(
                out,
                a,
                eval_strategy="steps",
                eval_steps=a.eval_every,
                save_strategy="steps",
                save_steps=a.eval_every,
                load_best_model_at_end=True,
                metric_for_best_model="accuracy",
            )
            trainer = Trainer(
                model,
                args,
                train_dataset=train,
                eval_dataset=val,
                data_collator=collate_fn,
                compute_metrics=compute_metrics,
            )
            trainer.train()
            metrics = trainer.evaluate(test)
            result.update(
                test_accuracy=metrics["eval_accuracy"], val_accuracy=trainer.state.best_metric
            )
    result["seconds_in_process"] = time.perf_counter() - started
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
