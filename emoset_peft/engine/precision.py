"""The precision a run computes in, decided from the device and its CPU features alone, and the
dtype the frozen base weights are stored in.

The rule is deterministic, so a command gives the same numbers however busy the machine is:

- CUDA: bf16 from Ampere on (``torch.cuda.is_bf16_supported``), fp16 on every GPU.
- CPU: bf16 with AMX (``amx_bf16`` in /proc/cpuinfo's flags), or with AVX512-BF16 on an AMD
  CPU (Zen 4 on); fp16 only with ``amx_fp16``. An Intel AVX512-BF16 without AMX is not enough:
  that Xeon multiplied bf16 at 196 GFLOP/s against 330 in fp32 (2026-11-29), while an AMX Xeon
  reaches about 3.8 TFLOP/s against 430, and an AVX512-BF16 EPYC 179 against 38 (ViT-S/16's
  fc1 shape; its ViT-S forward 4.3 against 3.5 images/s). On an AVX2 EPYC bf16 is emulated
  (18-21 GFLOP/s against 180; training 0.19 vs 6.7 images/s).
  ``benchmarks/bench_precision.py`` measures both rates on a machine and prints whether the
  rule picks the faster one there.
- Anything else runs fp32, except a device this rule does not know (mps, xpu, ...), which keeps
  the precision asked for.

A value ending in ``!`` (``train.mixed_precision=bf16!``) is the user's choice, kept as written.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The CPU flag that makes each low precision faster than fp32 (AMX tiles), and the flags that
# only make it native (oneDNN uses them, but fp32 measured faster on Intel): named in the reason.
FAST_CPU_FLAG = {"bf16": "amx_bf16", "fp16": "amx_fp16"}
NATIVE_CPU_FLAGS = {"bf16": ("avx512_bf16", "avx_ne_convert"), "fp16": ("avx512_fp16",)}
AMD = "AuthenticAMD"  # /proc/cpuinfo's vendor_id: its AVX512-BF16 measured faster than fp32
_LOGGED: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class PrecisionDecision:
    """What was asked for, what runs (``"no"`` = fp32, ``"bf16"``, ``"fp16"``) and why."""

    requested: str
    resolved: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision setting ("bf16", "fp16"); None for "no"."""
    return _DTYPES.get(str(precision))


@functools.cache  # the CPU does not change under a running process
def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(vendor_id, flags) of the first processor in /proc/cpuinfo; ("", no flags) where there
    is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "", frozenset()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:  # the first processor's block is enough
            break
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields.get("vendor_id", ""), frozenset(fields.get("flags", "").split())


def choose_precision(
    requested: str,
    device_type: str,
    *,
    gpu_bf16: bool = False,
    vendor: str = "",
    flags: frozenset[str] | set[str] = frozenset(),
) -> PrecisionDecision:
    """The rule alone, a pure function: ``requested`` as written in the config, the device kind,
    (CUDA) whether the GPU has native bf16, (CPU) its vendor_id and flags."""
    forced = requested.endswith("!")
    low = requested.rstrip("!")
    if low not in _DTYPES:
        return PrecisionDecision(requested, "no", "fp32 requested")
    if forced:
        return PrecisionDecision(
            requested, low, f"{low} forced by the user ({requested}), kept as written"
        )
    if device_type == "cuda":
        if low == "fp16" or gpu_bf16:
            return PrecisionDecision(requested, low, f"this GPU multiplies {low} natively")
        return PrecisionDecision(
            requested, "no", f"this GPU has no native {low} (before Ampere), so fp32"
        )
    if device_type != "cpu":
        return PrecisionDecision(requested, low, f"{low} as requested ({device_type}: not checked)")
    fast = FAST_CPU_FLAG[low]
    if fast in flags:
        return PrecisionDecision(
            requested, low, f"this CPU has {fast} (AMX): {low} is several times faster than fp32"
        )
    native = [flag for flag in NATIVE_CPU_FLAGS[low] if flag in flags]
    if low == "bf16" and "avx512_bf16" in flags and vendor == AMD:
        return PrecisionDecision(
            requested, low, "this AMD CPU has avx512_bf16: bf16 is faster than fp32 there"
        )
    if native:
        why = f"has {native[0]} but no {fast} (AMX): its {low} GEMM is slower than fp32"
    else:
        why = f"has no native {low} (emulated, several times slower)"
    return PrecisionDecision(requested, "no", f"this CPU {why}, so fp32")


def choose_here(requested: str, device: torch.device) -> PrecisionDecision:
    """``choose_precision`` for ``device`` on this machine, silently."""
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    vendor, flags = cpu_features() if device.type == "cpu" else ("", frozenset())
    return choose_precision(requested, device.type, gpu_bf16=gpu_bf16, vendor=vendor, flags=flags)


def decide_precision(requested: str, device: torch.device) -> PrecisionDecision:
    """``choose_here``, and the decision with its reason logged once per process."""
    decision = choose_here(requested, device)
    if (requested, device.type, decision.reason) not in _LOGGED:  # once, not once per cell
        _LOGGED.add((requested, device.type, decision.reason))
        dropped = decision.resolved == "no" and requested.rstrip("!") in _DTYPES
        log.log(
            logging.WARNING if dropped else logging.INFO,
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
    """``metrics.json``'s ``"precision"`` entry: requested, resolved, reason, device (the kind
    it ran on: what ``eval`` compares against to say why its numbers differ).

    ``ran``: what the accelerator actually runs (``accelerator.mixed_precision``); where a
    caller built it with another precision than the decision, the record says so.
    """
    record = {**decide_precision(requested, device).as_dict(), "device": device.type}
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


def store_frozen_weights(model, model_config, precision: str) -> None:
    """Frozen base weights in the dtype a run with ``model_config`` (``config.model``) keeps
    them at ``precision``: what training does after the build, and what scoring a saved run
    again must repeat, since bf16-rounded weights give other logits than fp32 ones under the
    same autocast. Quantized weights are left as they are."""
    if model_config.quantize is None:
        cast_frozen_weights(model, frozen_dtype(model_config.frozen_dtype, precision))
