"""Model-FLOPs utilisation: the FLOP/s a run achieves over the device's peak.

GPUs: the vendor's dense bf16 tensor-core peak, by device name (no sparsity); a device not in the
table, and every CPU, is measured instead: its best GEMM rate in this run (``_limits.gemm_rate``).
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s), most specific first.
KNOWN_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L4", 121.0),
)


def peak_gflops(device_name: str | None, measured_gflops: float) -> tuple[float, str]:
    """(peak GFLOP/s, where it comes from) for ``device_name`` (None: a CPU)."""
    for key, tflops in KNOWN_BF16_PEAK_TFLOPS:
        if device_name and key in device_name:
            return tflops * 1e3, f"{device_name}: dense bf16 peak {tflops:.0f} TFLOP/s (datasheet)"
    where = device_name or "this CPU"
    return (
        measured_gflops,
        f"{where}: best GEMM measured in this run, {measured_gflops:.0f} GFLOP/s",
    )


def mfu(images_per_second: float, flops_per_image: float, peak: float) -> float:
    """Achieved FLOP/s over ``peak`` (GFLOP/s), as a fraction."""
    return images_per_second * flops_per_image / (peak * 1e9)
