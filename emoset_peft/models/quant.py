"""Quantized backbones (bitsandbytes 8-bit / 4-bit NF4) for the PEFT methods that support them.

The frozen backbone's linear layers are quantized at load time; the new head stays in full
precision (``llm_int8_skip_modules``), otherwise it would be quantized too and PEFT could not
train a copy of it (``modules_to_save``). The patch embedding is a Conv2d, which bitsandbytes
never quantizes; it is listed anyway so the intent is explicit. bitsandbytes >= 0.45 runs both
modes on the CPU as well as on CUDA.
"""

from __future__ import annotations

import logging
import os

import torch

from emoset_peft.errors import EmoSetError
from emoset_peft.models import methods

QUANTIZE_MODES = ("8bit", "4bit")
# PEFT tuners with bitsandbytes layers (peft/tuners/<name>/bnb.py): each registry entry lists the
# modes checked to train on the CPU (``MethodSpec.quantize``).
QUANTIZABLE_METHODS = tuple(methods.QUANTIZABLE)
_KEEP_FULL_PRECISION = ["classifier", "patch_embedding", "patch_embeddings"]


class _Once(logging.Filter):
    """Let a per-call bitsandbytes warning through once instead of at every matmul."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


def _quiet_int8_cast_warning() -> None:
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Once) for f in log.filters):
        log.addFilter(_Once("MatMul8bitLt: inputs will be cast"))


def quantization_config(mode: str, compute_dtype: torch.dtype = torch.bfloat16):
    """A ``BitsAndBytesConfig`` for ``mode`` ("8bit" or "4bit": NF4 with double quantisation)."""
    from transformers import BitsAndBytesConfig

    if mode not in QUANTIZE_MODES:
        raise EmoSetError(
            f"quantize={mode!r}: choose one of {', '.join(QUANTIZE_MODES)} (or leave it out)"
        )
    if mode == "8bit":
        _quiet_int8_cast_warning()
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_KEEP_FULL_PRECISION)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=_KEEP_FULL_PRECISION,
    )


def kbit_device_map() -> dict | None:
    """Where a quantized backbone is loaded: this process's GPU under DDP, else None (the CPU).

    bitsandbytes quantizes while loading, so each process loads onto its own device (the pattern
    of PEFT's and TRL's QLoRA examples: ``{"": local rank}``) instead of moving a quantized model.
    """
    if not torch.cuda.is_available():
        return None
    return {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}


def check_quantizable(spec: methods.MethodSpec, mode: str | None) -> None:
    """EmoSetError unless method ``spec`` can train on a ``mode``-quantized backbone."""
    if mode is None:
        return
    if mode not in QUANTIZE_MODES:
        raise EmoSetError(
            f"quantize={mode!r}: choose one of {', '.join(QUANTIZE_MODES)} (or leave it out)"
        )
    if mode not in spec.quantize:
        fits = ", ".join(
            f"{name} ({'/'.join(modes)})" for name, modes in methods.QUANTIZABLE.items()
        )
        raise EmoSetError(
            f"quantize={mode!r} does not fit method {spec.name!r}: adapters on quantized layers work for "
            f"{fits}; drop quantize= for this method"
        )


def prepare_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """PEFT's k-bit preparation: freeze the backbone, keep norms and the head in float32."""
    from peft import prepare_model_for_kbit_training

    # Checkpointing is switched on by build_model itself (non-reentrant), not here.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_cpu_packing_in_bounds(model: torch.nn.Module) -> torch.nn.Module:
    """Keep bitsandbytes' AVX512-BF16 4-bit path off layers it cannot pack.

    On a CPU with AVX512-BF16 (or AMX), bitsandbytes 0.50 repacks a ``Linear4bit`` weight the
    first time it runs without gradients, which needs ``in_features`` to be a multiple of the
    quantization block (64) and ``out_features`` of 32; a narrower layer fails inside
    bitsandbytes ("shape '[32, 0]' is invalid"). Those layers keep the generic CPU kernel.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return model
    for module in model.modules():
        if isinstance(module, Linear4bit):
            state = getattr(module.weight, "quant_state", None)
            block = getattr(state, "blocksize", 64) or 64
            if module.in_features % block or module.out_features % 32:
                module.support_avx512bf16_for_cpu = False
    return model
