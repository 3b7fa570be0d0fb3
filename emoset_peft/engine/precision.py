"""The precision a run computes in: mixed precision only where the hardware has it, and the
dtype the frozen base weights are stored in.

bf16/fp16 autocast on a CPU without native low-precision matrix multiplies runs several times
slower than fp32 (measured on an AVX2 EPYC: bf16 GEMM 18-21 GFLOP/s against 180 in fp32;
training 0.19 vs 6.7 images/s). With AVX512-BF16/AMX it is the fast choice (measured on a
2-core AMX Xeon: about 3 TFLOP/s bf16 against 350 GFLOP/s fp32). Recipes say ``bf16`` for GPUs;
``resolve_mixed_precision`` turns that into fp32 where it would only be emulated, with a warning.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_WARNED: set[tuple[str, str]] = set()


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision setting ("bf16", "fp16"); None for "no"."""
    return _DTYPES.get(str(precision))


def native_low_precision(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``dtype`` matrix multiplies run at hardware speed on ``device``.

    CUDA: bf16 from Ampere on, fp16 everywhere. CPU: only with AVX512-BF16/AMX/AVX-NE-CONVERT
    (what oneDNN's bf16 kernels need); elsewhere PyTorch falls back to a reference GEMM.
    """
    if device.type == "cuda":
        return dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = {torch.bfloat16: "_is_mkldnn_bf16_supported",
                 torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
        probe = getattr(torch.ops.mkldnn, check, None) if check else None
        return bool(probe()) if probe is not None else False
    return True  # mps, xpu, ...: trust the user's choice


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """The precision to actually train in: ``requested``, unless it is emulated on ``device``."""
    dtype = precision_dtype(requested)
    if dtype is None or native_low_precision(device, dtype):
        return requested
    if (requested, device.type) in _WARNED:  # once per process, not once per study cell
        return "no"
    _WARNED.add((requested, device.type))
    log.warning("mixed_precision=%s is emulated on this %s (no native %s matrix multiply): "
                "training in fp32 instead, which is several times faster here", requested,
                device.type, requested)
    return "no"


def frozen_dtype(setting: str, precision: str) -> torch.dtype | None:
    """The dtype for frozen base weights: ``setting`` ("auto" follows the resolved precision:
    autocast would cast them to it on every step anyway), or None to leave them as loaded."""
    if setting == "auto":
        return precision_dtype(precision)
    return None if setting == "float32" else getattr(torch, setting)


def cast_frozen_weights(model, dtype: torch.dtype | None) -> None:
    if dtype is None:
        return
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
