"""The precision a run computes in: mixed precision only where it is faster, and the dtype the
frozen base weights are stored in.

bf16/fp16 autocast on a CPU without native low-precision matrix multiplies runs several times
slower than fp32 (measured on an AVX2 EPYC: bf16 GEMM 18-21 GFLOP/s against 180 in fp32;
training 0.19 vs 6.7 images/s). Native bf16 instructions are not enough either: an AVX512-BF16
Xeon without AMX multiplies bf16 at 196 GFLOP/s against 330 in fp32, while an AMX Xeon reaches
about 3.8 TFLOP/s against 430. So on a CPU with native bf16 the choice is made by measurement
(``precision_probe``: both GEMM rates at a ViT's shapes, cached per machine), and bf16 is taken
only when it is at least ``MARGIN`` times faster. GPUs keep bf16 where they support it. A value
ending in ``!`` (``train.mixed_precision=bf16!``) is the user's choice, kept as written.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MARGIN = 1.15  # bf16 must beat fp32 by this much: below it, fp32's accuracy is worth more
_LOGGED: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class PrecisionDecision:
    """What was asked for, what runs (``"no"`` = fp32, ``"bf16"``, ``"fp16"``) and why."""

    requested: str
    resolved: str
    reason: str
    measured: dict | None = None  # {"bf16_gflops": ..., "fp32_gflops": ...} when probed

    def as_dict(self) -> dict:
        return asdict(self)


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
        check = {
            torch.bfloat16: "_is_mkldnn_bf16_supported",
            torch.float16: "_is_mkldnn_fp16_supported",
        }.get(dtype)
        probe = getattr(torch.ops.mkldnn, check, None) if check else None
        return bool(probe()) if probe is not None else False
    return True  # mps, xpu, ...: trust the user's choice


def choose_precision(
    requested: str, device_type: str, native: bool, measured: dict | None = None
) -> PrecisionDecision:
    """The rule alone, a pure function: ``requested`` as written in the config, the device
    kind, whether it multiplies ``requested`` natively, and (CPU) the probe's GEMM rates."""
    forced = requested.endswith("!")
    low = requested.rstrip("!")
    if low not in _DTYPES:
        return PrecisionDecision(requested, "no", "fp32 requested")
    if forced:
        note = "" if native else f"; emulated on this {device_type}: several times slower"
        return PrecisionDecision(
            requested,
            low,
            f"{low} forced by the user ({requested}), kept as written, not measured{note}",
        )
    if device_type == "cuda":
        if native:
            return PrecisionDecision(requested, low, f"this GPU multiplies {low} natively")
        return PrecisionDecision(
            requested, "no", f"this GPU has no native {low} (before Ampere), so fp32"
        )
    if device_type != "cpu":
        return PrecisionDecision(requested, low, f"{low} as requested ({device_type}: not checked)")
    if not native:
        return PrecisionDecision(
            requested,
            "no",
            f"{low} is emulated on this CPU (no native "
            f"{low} matrix multiply), so fp32: several times faster here",
        )
    if not measured:
        return PrecisionDecision(
            requested, low, f"this CPU multiplies {low} natively; the speed probe did not run"
        )
    fast, slow = measured[f"{low}_gflops"], measured["fp32_gflops"]
    ratio = fast / slow
    verdict = f">= {MARGIN:.2f}x, so {low}" if ratio >= MARGIN else f"< {MARGIN:.2f}x, so fp32"
    return PrecisionDecision(
        requested,
        low if ratio >= MARGIN else "no",
        f"{low} GEMM {fast:.0f} GFLOP/s vs fp32 {slow:.0f} at ViT shapes: {ratio:.2f}x {verdict}",
        {f"{low}_gflops": fast, "fp32_gflops": slow},
    )


def decide_precision(requested: str, device: torch.device) -> PrecisionDecision:
    """``choose_precision`` on this machine: on a CPU with native ``requested`` the GEMM rates
    come from ``precision_probe.cached_gemm_rates`` (measured once per machine, then read from
    the cache folder). Logs the decision and its reason once per process."""
    low = requested.rstrip("!")
    dtype = _DTYPES.get(low)
    native = dtype is not None and native_low_precision(device, dtype)
    measured = None
    if native and device.type == "cpu" and not requested.endswith("!"):
        from emoset_peft.engine.precision_probe import cached_gemm_rates

        try:
            measured = cached_gemm_rates(low)
        except RuntimeError as error:  # a oneDNN failure: fall back to "native means fast"
            log.warning("precision probe failed (%s): keeping %s", error, low)
    decision = choose_precision(requested, device.type, native, measured)
    if (requested, device.type, decision.reason) not in _LOGGED:  # once, not once per cell
        _LOGGED.add((requested, device.type, decision.reason))
        level = logging.WARNING if dtype is not None and not native else logging.INFO
        log.log(
            level,
            "mixed_precision=%s on %s: running %s (%s)",
            requested,
            device.type,
            decision.resolved if decision.resolved != "no" else "fp32",
            decision.reason,
        )
    return decision


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """The precision to actually train in (``"no"``, ``"bf16"`` or ``"fp16"``), for
    ``Accelerator(mixed_precision=...)``: ``decide_precision(...).resolved``."""
    return decide_precision(requested, device).resolved


def precision_record(requested: str, device: torch.device, ran: str | None = None) -> dict:
    """``metrics.json``'s ``"precision"`` entry: requested, resolved, reason, measured rates.

    ``ran``: what the accelerator actually runs (``accelerator.mixed_precision``); where a
    caller built it with another precision than the decision, the record says so.
    """
    record = decide_precision(requested, device).as_dict()
    if ran is not None and str(ran) != record["resolved"]:
        record["reason"] = (
            f"{ran} set by the caller's accelerator (the decision would have "
            f"been {record['resolved']}: {record['reason']})"
        )
        record["resolved"] = str(ran)
    return record


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
