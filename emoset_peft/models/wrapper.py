"""``EmoSetModel``: what ``build_model`` and ``load_adapter`` return, and the helpers the trainer uses.

One wrapper for every method, so the training loop sees one interface:
``model(pixel_values=...) -> .logits``, ``model.save_pretrained(dir)``, ``count_parameters``,
``extra_loss`` and ``after_optimizer_step`` (the last two unwrap DDP / accelerate / torch.compile
wrappers). ``model.network`` is the transformers classifier, or the ``peft.PeftModel`` around it.

Saved folder (``save_pretrained``), all methods: ``emoset_peft.json`` (format version, method,
backbone, options, label map, input spec) plus weights in safetensors:
- PEFT methods: PEFT's own ``adapter_config.json`` + ``adapter_model.safetensors`` (adapter and
  the trained head), loadable by plain ``peft.PeftModel.from_pretrained``;
- prefix, vpt, linear, zeroshot: ``adapter_model.safetensors`` with the prefix / prompts and the head;
- full: a complete transformers checkpoint (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from emoset_peft.errors import EmoSetError
from emoset_peft.models.families import InputSpec, family_for

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
RECORD_NAME = "emoset_peft.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# What a saved folder must hold besides emoset_peft.json, per method kind: (JSON files, weights).
_FOLDER_FILES = {"peft": (("adapter_config.json",), WEIGHTS_NAME),
                 "full": (("config.json",), "model.safetensors")}
_RECORD_KEYS = {"method": str, "kind": str, "backbone": str, "model_type": str, "id2label": dict,
                "options": dict, "input_spec": dict}


class EmoSetModel(nn.Module):
    """An image classifier with one fine-tuning method attached.

    ``record`` is the JSON-able description written to ``emoset_peft.json`` (method, backbone,
    options, label map, ...). ``prefix`` / ``prompts`` hold the prefix-tuning and VPT parameters.
    """

    def __init__(
        self,
        network: nn.Module,
        record: dict,
        *,
        prefix: nn.Module | None = None,
        prompts: nn.Module | None = None,
    ):
        super().__init__()
        self.network = network
        self.prefix = prefix
        self.prompts = prompts
        self.record = record
        # AdaLoRA scores ranks from the gradients after optimizer.step(); keep a reference to each
        # adapter gradient so a zero_grad(set_to_none=True) before after_optimizer_step is harmless.
        self._last_grads: dict[nn.Parameter, torch.Tensor] = {}
        if record["method"] == "adalora":
            for name, param in network.named_parameters():
                if "lora_" in name and param.requires_grad:
                    param.register_post_accumulate_grad_hook(self._keep_grad)

    def _keep_grad(self, param: nn.Parameter) -> None:
        self._last_grads[param] = param.grad

    # -- what the rest of the toolkit reads ---------------------------------------------------
    @property
    def method(self) -> str:
        return self.record["method"]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def classifier_model(self) -> nn.Module:
        """The transformers classifier (inside the PeftModel for PEFT methods)."""
        getter = getattr(self.network, "get_base_model", None)
        return getter() if getter is not None else self.network

    @property
    def config(self):
        return self.classifier_model.config

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.record["id2label"].items()}

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.record["input_spec"])

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        """Logits [B, num_labels]; with ``labels``, also cross-entropy + the method's extra loss."""
        if self.prefix is not None:
            kwargs["emoset_prefix"] = self.prefix()
        outputs = self.network(pixel_values=pixel_values, **kwargs)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(outputs.logits.float(), labels) + extra_loss(self)
        return ImageClassifierOutput(
            loss=loss,
            logits=outputs.logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # -- saving ---------------------------------------------------------------------------------
    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a prefix / vpt / linear / zeroshot folder stores: prefix or prompts + head."""
        head = f"network.{self.record['head']}."
        keep = ("prefix.", "prompts.", head)
        return {
            name: tensor.detach().cpu().contiguous()
            for name, tensor in self.state_dict().items()
            if name.startswith(keep)
        }

    def save_pretrained(
        self, save_directory: str | Path, *, is_main_process: bool = True, safe_serialization: bool = True
    ) -> None:
        """Write the adapter (or prefix / prompts / full weights), the head and the label map.

        Under accelerate, call it on every process with ``is_main_process=accelerator.is_main_process``
        (or on the main process only); only the main process writes.
        """
        if not safe_serialization:
            raise EmoSetError(
                "save_pretrained writes safetensors only (no pickled weights); drop safe_serialization=False"
            )
        if not is_main_process:
            return
        from safetensors.torch import save_file

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        if self.kind == "peft":
            self.network.save_pretrained(str(path), safe_serialization=True)
            _append_loading_note(path, self.record)
        elif self.kind == "full":
            self.network.save_pretrained(str(path), safe_serialization=True)
        else:
            save_file(self.saved_state_dict(), str(path / WEIGHTS_NAME), metadata={"format": "pt"})
        record = {**self.record, "format_version": FORMAT_VERSION}
        (path / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")

    def merge_and_unload(self) -> nn.Module:
        """A plain transformers classifier with the adapter merged into its weights (LoRA family, IA3).

        linear / full / zeroshot have nothing to merge and return the classifier itself.
        """
        if self.kind == "peft":
            return self.network.merge_and_unload()
        if self.kind in ("linear", "full", "zeroshot"):
            return self.network
        raise EmoSetError(
            f"method {self.method!r} adds tokens to the attention and cannot be merged into the weights; "
            "save it with save_pretrained and load it with emoset_peft.load_adapter"
        )


def check_adapter_folder(path: str | Path) -> None:
    """EmoSetError (one line naming the file) unless ``path`` is an intact saved folder.

    Reads only JSON and safetensors headers; pickle files (``*.bin``) are never opened, and a
    folder whose weights exist only as a pickle is refused rather than handed to a loader that
    might unpickle it. A missing ``emoset_peft.json`` is left to ``read_record`` (its message
    tells a plain PEFT folder apart).
    """
    path = Path(path)
    if not path.is_dir():
        raise EmoSetError(f"{path}: no such folder; give a folder written by "
                          "EmoSetModel.save_pretrained (a run's adapter/ folder)")
    record_file = path / RECORD_NAME
    if not record_file.is_file():
        return
    fix = "the folder is damaged: save the model again, or train the run again"
    record = _read_json_object(record_file, fix)
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        return  # another format: read_record names it and says to upgrade
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise EmoSetError(f"{record_file}: missing {', '.join(missing)}; {fix}")
    wrong = [key for key, kind in _RECORD_KEYS.items() if not isinstance(record[key], kind)]
    if wrong:
        raise EmoSetError(f"{record_file}: {', '.join(wrong)} of the wrong type; {fix}")
    json_files, weights = _FOLDER_FILES.get(record["kind"], ((), WEIGHTS_NAME))
    for name in json_files:
        _read_json_object(path / name, fix)
    weights_file = path / weights
    if not weights_file.is_file():
        pickles = sorted(p.name for p in path.glob("*.bin"))
        if pickles:
            raise EmoSetError(
                f"{weights_file} is missing and the folder holds only the pickle file(s) "
                f"{', '.join(pickles)}, which emoset_peft never loads (unpickling can run code); "
                "use a folder saved as safetensors by emoset_peft, from a source you trust")
        raise EmoSetError(f"{weights_file} is missing; {fix}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise EmoSetError(f"{weights_file} is not a readable safetensors file ({err}); "
                          f"{fix}") from None


def _read_json_object(file: Path, fix: str) -> dict:
    try:
        content = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise EmoSetError(f"{file} is missing; {fix}") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = " ".join(str(err).split())
        raise EmoSetError(f"{file} is not valid JSON ({reason}); {fix}") from None
    if not isinstance(content, dict):
        raise EmoSetError(f"{file} must hold a JSON object; {fix}")
    return content


def _append_loading_note(path: Path, record: dict) -> None:
    """Add the plain-PEFT loading recipe to the model card PEFT wrote."""
    card = path / "README.md"
    text = card.read_text() if card.exists() else ""
    note = "\n## Loading without emoset_peft\n\n```python\n" + plain_peft_snippet(record) + "```\n"
    card.write_text(text + note)


def unwrap(model: nn.Module) -> nn.Module:
    """The EmoSetModel inside DDP / accelerate / torch.compile wrappers (or ``model`` itself)."""
    while not isinstance(model, EmoSetModel):
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their unpacked size."""
    trainable = total = 0
    for param in unwrap(model).parameters():
        count = param.numel()
        if param.__class__.__name__ == "Params4bit":
            # Two 4-bit values per byte of storage (as peft.PeftModel.get_nb_trainable_parameters).
            storage = getattr(param, "quant_storage", None)
            count *= 2 * (storage.itemsize if storage is not None else 1)
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def input_spec(model_or_backbone) -> InputSpec:
    """Image size and normalisation for a built model, or for a backbone (Hub id / folder)."""
    if isinstance(model_or_backbone, nn.Module):
        model = unwrap(model_or_backbone)
        if not isinstance(model, EmoSetModel):
            raise EmoSetError(
                "input_spec: expected a model from build_model/load_adapter, or a backbone id/folder"
            )
        return model.input_spec
    from emoset_peft.models.backbones import describe_backbone

    return describe_backbone(model_or_backbone)[0].input_spec


def extra_loss(model: nn.Module) -> torch.Tensor | float:
    """AdaLoRA's orthogonality regulariser (weighted); 0.0 for every other method.

    Mirrors ``peft.tuners.adalora.AdaLoraModel.forward``, which only adds it when the model itself
    returns a loss: R = w * mean over lora_A / lora_B of ||P P^T - I||_F (A) or ||P^T P - I||_F (B).
    """
    model = unwrap(model)
    if not isinstance(model, EmoSetModel) or model.method != "adalora":
        return 0.0
    peft_model = model.network
    adapter = peft_model.base_model.trainable_adapter_name
    weight = peft_model.peft_config[adapter].orth_reg_weight
    terms = []
    for name, param in peft_model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            cov = param @ param.T if "lora_A" in name else param.T @ param
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
    return weight * torch.stack(terms).mean() if terms else 0.0


def after_optimizer_step(model: nn.Module, global_step: int) -> None:
    """Per-step bookkeeping: AdaLoRA's rank budget (``update_and_allocate``); no-op otherwise.

    Call it once per optimizer step, after ``optimizer.step()``, before or after
    ``optimizer.zero_grad()`` (the last gradients are kept for AdaLoRA's importance scores).
    ``global_step`` counts optimizer steps from 0.
    """
    model = unwrap(model)
    if not isinstance(model, EmoSetModel) or model.method != "adalora":
        return
    peft_model = model.network
    config = peft_model.peft_config[peft_model.base_model.trainable_adapter_name]
    if global_step <= config.total_step - config.tfinal and not model._last_grads:
        raise EmoSetError(
            "after_optimizer_step: AdaLoRA scores ranks from the gradients, but there has been "
            "no backward pass yet; call it after loss.backward() and optimizer.step()"
        )
    restored = [p for p in model._last_grads if p.grad is None]
    for param in restored:
        param.grad = model._last_grads[param]
    try:
        peft_model.base_model.update_and_allocate(global_step)
    finally:
        for param in restored:
            param.grad = None


def log_parameter_counts(model: EmoSetModel) -> None:
    trainable, total = count_parameters(model)
    logger.info(
        "%s on %s: %s trainable of %s parameters (%.4f%%)",
        model.method,
        model.record["backbone"],
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / max(total, 1),
    )


_VIT_LIKE_SNIPPET = """\
from transformers import AutoModelForImageClassification
from peft import PeftModel

# ADAPTER_DIR: this folder; pixel_values: [B, 3, H, W] images normalised as in emoset_peft.json "input_spec"
id2label = {id2label}
base = AutoModelForImageClassification.from_pretrained(
    {backbone!r}, num_labels={num_labels}, id2label=id2label, ignore_mismatched_sizes=True
)
model = PeftModel.from_pretrained(base, ADAPTER_DIR).eval()
logits = model(pixel_values=pixel_values).logits
"""

_CLIP_SNIPPET = """\
import torch
from transformers import CLIPVisionModelWithProjection
from peft import PeftModel

# ADAPTER_DIR: this folder; pixel_values: [B, 3, H, W] images normalised as in emoset_peft.json "input_spec"
id2label = {id2label}
base = CLIPVisionModelWithProjection.from_pretrained({backbone!r})
{projection}base.classifier = torch.nn.Linear({width}, {num_labels})  # reads the unit-RMS image embedding
model = PeftModel.from_pretrained(base, ADAPTER_DIR).eval()
embeds = model(pixel_values=pixel_values).image_embeds
logits = model.classifier(torch.nn.functional.normalize(embeds, dim=-1) * embeds.shape[-1] ** 0.5)
"""


def plain_peft_snippet(record: dict) -> str:
    """Python that loads a saved PEFT-method folder with transformers + peft only (no emoset_peft)."""
    fields = {
        "backbone": record["backbone"],
        "num_labels": record["num_labels"],
        "id2label": {int(k): v for k, v in record["id2label"].items()},
    }
    if not family_for(record["model_type"]).loader.reads_image_embedding:
        return _VIT_LIKE_SNIPPET.format(**fields)
    if record.get("clip_projection"):
        return _CLIP_SNIPPET.format(**fields, projection="", width="base.config.projection_dim")
    # A vision-only checkpoint has no projection: the head reads the pooled [CLS] features.
    identity = "base.visual_projection = torch.nn.Identity()\n"
    return _CLIP_SNIPPET.format(**fields, projection=identity, width="base.config.hidden_size")
