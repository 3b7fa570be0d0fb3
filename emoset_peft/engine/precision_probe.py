"""How fast this CPU multiplies matrices in bf16 (or fp16) against fp32, measured once and cached.

A CPU that *has* bf16 instructions is not necessarily faster in bf16: on an AVX512-BF16 Xeon
without AMX, oneDNN's bf16 GEMM ran at 196 GFLOP/s against 330 in fp32 (2026-11-29), while an
AMX Xeon runs bf16 near 3.8 TFLOP/s against 430. So the choice is made by timing both at a
vision transformer's shapes: a few hundred milliseconds, once per machine, cached in the
toolkit's cache folder under a key naming the CPU (model, family, flags), the torch version,
the thread count and the shapes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PROBE_VERSION = 1  # bump when the measurement changes, so cached rates are taken again
CACHE_FILE = "precision_probe.json"
# (rows, in, out) of F.linear at ViT-S/16 with a batch of 16 (16 x 197 tokens, hidden 384):
# q/k/v/o, then the MLP's fc1 (4x hidden) and fc2. Small enough for ~0.1-0.3 s in all, and the
# sizes where the two precisions' kernels differ the most in practice (a large square flatters
# AMX less than these do).
VIT_SHAPES = ((3152, 384, 384), (3152, 384, 1536), (3152, 1536, 384))
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags that change what the low-precision kernels can use; the same "model name" string
# (a KVM guest's "Intel(R) Xeon(R) Processor") covers machines with and without AMX.
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "avx_ne_convert")
_MEMO: dict[tuple[str, str], dict] = {}


@functools.cache  # the CPU does not change under a running process
def cpu_identity() -> str:
    """The CPU's model name, family/model/stepping and its low-precision flags, in one line."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "cpu family", "model", "stepping", "flags"):
                fields.setdefault(name, value.strip())
            if not line.strip() and fields:  # the first processor's block is enough
                break
    except OSError:
        import platform

        return platform.processor() or platform.machine() or "unknown cpu"
    flags = set(fields.get("flags", "").split())
    return (
        f"{fields.get('model name', 'unknown cpu')} (family {fields.get('cpu family', '?')} "
        f"model {fields.get('model', '?')} stepping {fields.get('stepping', '?')}; "
        f"{','.join(f for f in _FLAGS if f in flags) or 'no vector flags'})"
    )


def cache_key(low: str, shapes=VIT_SHAPES, threads: int | None = None) -> str:
    threads = threads or torch.get_num_threads()
    shape_text = ",".join("x".join(map(str, s)) for s in shapes)
    return (
        f"v{PROBE_VERSION}|{cpu_identity()}|torch {torch.__version__}|{threads} threads|"
        f"{low} vs fp32|{shape_text}"
    )


def measure_gemm_rates(low: str = "bf16", shapes=VIT_SHAPES, repeats: int = 3) -> dict:
    """GFLOP/s of ``F.linear`` in ``low`` and in fp32 over ``shapes`` (the best of ``repeats``
    timings per shape, the two precisions interleaved so that a co-tenant's burst hits both).

    Returns ``{f"{low}_gflops": ..., "fp32_gflops": ..., "seconds": wall time of the probe,
    "load_avg_1min": the machine's load meanwhile}``. The two precisions are timed in turn, so
    a busy machine slows both: their ratio, which decides, holds up better than either rate.
    """
    import torch.nn.functional as F

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    operands = {
        name: [
            (
                torch.randn(rows, fan_in, generator=generator).to(_DTYPES[name]),
                torch.randn(fan_out, fan_in, generator=generator).to(_DTYPES[name]),
            )
            for rows, fan_in, fan_out in shapes
        ]
        for name in (low, "fp32")
    }
    best = {name: [float("inf")] * len(shapes) for name in operands}
    with torch.inference_mode():
        for round_index in range(repeats + 1):  # round 0 warms oneDNN's kernel caches
            for name, pairs in operands.items():
                for index, (x, w) in enumerate(pairs):
                    tick = time.perf_counter()
                    F.linear(x, w)
                    seconds = time.perf_counter() - tick
                    if round_index:
                        best[name][index] = min(best[name][index], seconds)
    flops = sum(2.0 * rows * fan_in * fan_out for rows, fan_in, fan_out in shapes)
    rates = {
        f"{name}_gflops": round(flops / max(sum(times), 1e-9) / 1e9, 1)
        for name, times in best.items()
    }
    rates["seconds"] = round(time.perf_counter() - started, 3)
    if hasattr(os, "getloadavg"):  # a busy machine lowers both rates; the file says how busy
        rates["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return rates


def cached_gemm_rates(
    low: str = "bf16", shapes=VIT_SHAPES, cache_dir: str | Path | None = None
) -> dict:
    """``measure_gemm_rates`` once per (CPU, torch version, threads, shapes): read from
    ``<cache_dir>/precision_probe.json`` when it holds the key, else measured and stored there.

    The result carries ``"cached": True`` when it came from the file or from this process's
    memory. An unreadable or unwritable cache file only costs a new measurement.
    """
    if cache_dir is None:
        from emoset_peft.data.emoset import default_cache_dir

        cache_dir = default_cache_dir()
    path = Path(cache_dir) / CACHE_FILE
    key = cache_key(low, shapes)
    memo_key = (str(path), key)
    if memo_key in _MEMO:
        return {**_MEMO[memo_key], "cached": True}
    entries = _read_entries(path)
    if key in entries and _valid(entries[key], low):
        rates = {**entries[key], "cached": True}
    else:
        rates = {**measure_gemm_rates(low, shapes), "cached": False}
        _store(path, key, {k: v for k, v in rates.items() if k != "cached"})
    _MEMO[memo_key] = {k: v for k, v in rates.items() if k != "cached"}
    return rates


def _valid(entry, low: str) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(f"{name}_gflops"), (int, float)) and entry[f"{name}_gflops"] > 0
        for name in (low, "fp32")
    )


def _read_entries(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = content.get("entries") if isinstance(content, dict) else None
    return entries if isinstance(entries, dict) else {}


def _store(path: Path, key: str, rates: dict) -> None:
    from emoset_peft.utils.io import atomic_write_json

    entries = _read_entries(path)  # again: another process may have added its own meanwhile
    entries[key] = {**rates, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        atomic_write_json(path, {"version": PROBE_VERSION, "entries": entries})
    except OSError as error:  # a read-only cache folder: measure again next time
        log.debug("could not cache the precision probe in %s: %s", path, error)
