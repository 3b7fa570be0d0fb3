"""Third-party warnings a user cannot act on, named and filtered in this one place.

``install()`` runs when the package is imported (``emoset_peft/__init__.py``: the libraries
below warn while they are imported, before any entry point runs) and again in ``cli.main``; it
is idempotent. Each entry says who warns and why nothing is lost; remove an entry when the
library stops warning. Anything not listed here is shown as usual.
"""

from __future__ import annotations

import logging
import warnings

# (category, regex the message starts with): warnings.filterwarnings entries.
WARNINGS = (
    # peft reads transformers 5's deprecated `is_gradient_checkpointing`; the toolkit never does.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # peft >= 0.21 checks rank_pattern keys as LoRA module patterns on every load, but a trained
    # AdaLoRA adapter's rank_pattern is peft's own per-parameter record ("<module>.lora_E": kept
    # ranks), which AdaLoRA applies when it loads (resize_modules_by_rank_pattern). Only such
    # keys are matched (no colon: pytest's -W syntax); a LoRA user's stray key still warns.
    # The wording between "did not match" and the key list changes between peft releases
    # (0.21: "any targeted module and were ignored", 0.22: "... module or parameter and ..."),
    # so only the start and the all-".lora_E" key list are pinned.
    (
        RuntimeWarning,
        r"The following rank_pattern keys did not match any targeted module[^\[]*"
        r"\['[^']*\.lora_E'(, '[^']*\.lora_E')*\]\.$",
    ),
    # tqdm.auto, imported by the toolkit and the Hugging Face libraries in a Jupyter kernel
    # without ipywidgets (a TqdmWarning, matched by its base class so tqdm is not imported
    # here): the bars fall back to the text ones the CLI draws, and show_progress=False (the
    # notebook's setting) draws none.
    (Warning, r"IProgress not found"),
)

# logger name -> message prefixes dropped from that logger (its other records pass).
LOG_RECORDS = {
    # bitsandbytes >= 0.49 on the CPU, at import: the optional Hub `kernels` package for 4-bit
    # matmuls is absent, so its pure-PyTorch path runs (the one the toolkit's tests check).
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    # ... and with the `kernels` package installed and HF_HUB_OFFLINE=1, `kernels` says first
    # that it cannot check that kernel's publisher offline (then loads it only from the local
    # cache, or fails into the line above). Only that one repository's line is dropped.
    "kernels._internals.hf_hub": (
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'",
    ),
    # model.quantize=8bit, every step: LLM.int8 computes in float16 by design; the toolkit picks
    # the dtypes, and its 8-bit tests check the result.
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast from",),
    # train.compile=true on a machine without CUDA: inductor's C++ build looks for CUDA and
    # builds for the CPU, which is what was asked for.
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def install() -> None:
    """Add the filters (again: a no-op)."""
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefixes in LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
