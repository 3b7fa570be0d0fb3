"""Precision by rule: the device and its CPU features decide, never a timing; a forced choice."""

import importlib.util

import pytest
import torch

from emoset_peft.config import load_config, validate
from emoset_peft.engine import precision
from emoset_peft.engine.precision import choose_precision, cpu_features

# The flags of the three 2-core machine types this project has met (a subset of each).
AMX_XEON = ("GenuineIntel", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
AVX512_BF16_XEON = ("GenuineIntel", frozenset({"avx2", "avx512f", "avx512_bf16"}))
AVX512_BF16_EPYC = ("AuthenticAMD", frozenset({"avx2", "avx512f", "avx512_bf16"}))
AVX2_EPYC = ("AuthenticAMD", frozenset({"avx2", "fma"}))


def _on(machine, requested="bf16"):
    vendor, flags = machine
    return choose_precision(requested, "cpu", vendor=vendor, flags=flags)


def test_amx_cpu_runs_bf16():
    decision = _on(AMX_XEON)
    assert decision.resolved == "bf16" and "amx_bf16" in decision.reason


def test_intel_avx512_bf16_without_amx_runs_fp32_although_bf16_is_native():
    decision = _on(AVX512_BF16_XEON)
    assert decision.resolved == "no"
    assert "avx512_bf16 but no amx_bf16" in decision.reason and "so fp32" in decision.reason


def test_amd_avx512_bf16_runs_bf16():
    decision = _on(AVX512_BF16_EPYC)
    assert decision.resolved == "bf16" and "AMD" in decision.reason


def test_avx2_cpu_runs_fp32_because_bf16_is_emulated():
    decision = _on(AVX2_EPYC)
    assert decision.resolved == "no" and "emulated" in decision.reason
    assert _on(AMX_XEON, "fp16").resolved == "no"  # AMX-BF16 alone has no fp16 tiles
    assert _on(("GenuineIntel", frozenset({"amx_fp16"})), "fp16").resolved == "fp16"


def test_gpus_keep_bf16_where_supported_and_fp32_is_never_changed():
    assert choose_precision("bf16", "cuda", gpu_bf16=True).resolved == "bf16"
    assert choose_precision("bf16", "cuda", gpu_bf16=False).resolved == "no"
    assert choose_precision("fp16", "cuda").resolved == "fp16"
    assert _on(AMX_XEON, "no").resolved == "no"


def test_forced_choice_is_kept_where_the_rule_picks_fp32():
    forced = _on(AVX2_EPYC, "bf16!")
    assert forced.resolved == "bf16" and forced.requested == "bf16!"
    assert "forced" in forced.reason


def test_cpu_features_read_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 amx_bf16\n\n"
        "processor\t: 1\nvendor_id\t: Other\nflags\t\t: fpu\n"
    )
    assert cpu_features(str(info)) == ("GenuineIntel", frozenset({"fpu", "avx2", "amx_bf16"}))
    assert cpu_features(str(tmp_path / "missing")) == ("", frozenset())


def test_the_decision_times_nothing_and_keeps_no_cache(monkeypatch, tmp_path):
    """Whatever the load, the same machine decides the same: no GEMM is run to decide."""
    monkeypatch.setenv("EMOSET_PEFT_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_features", lambda: AVX512_BF16_XEON)

    def no_timing(*args, **kwargs):
        raise AssertionError("the precision decision ran a matrix multiply")

    monkeypatch.setattr(torch.nn.functional, "linear", no_timing)
    monkeypatch.setattr(torch, "matmul", no_timing)
    record = precision.precision_record("bf16", torch.device("cpu"))
    assert record == {
        "requested": "bf16",
        "resolved": "no",
        "reason": "this CPU has avx512_bf16 but no amx_bf16 (AMX): its bf16 GEMM is slower "
        "than fp32, so fp32",
        "device": "cpu",
    }
    assert list(tmp_path.iterdir()) == []  # no probe cache file
    assert importlib.util.find_spec("emoset_peft.engine.precision_probe") is None


def test_forced_bf16_is_kept_on_a_cpu_whose_rule_picks_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: AVX2_EPYC)
    cpu = torch.device("cpu")
    assert precision.resolve_mixed_precision("bf16", cpu) == "no"
    assert precision.resolve_mixed_precision("bf16!", cpu) == "bf16"
    record = precision.precision_record("bf16!", cpu)
    assert record["requested"] == "bf16!" and record["resolved"] == "bf16"
    assert "forced" in record["reason"] and "measured" not in record


def test_record_says_what_the_accelerator_ran_when_a_caller_chose_otherwise(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: AVX512_BF16_XEON)
    record = precision.precision_record("bf16", torch.device("cpu"), ran="bf16")
    assert record["resolved"] == "bf16" and "set by the caller" in record["reason"]
    assert precision.precision_record("no", torch.device("cpu"), ran="no")["reason"] == (
        "fp32 requested"
    )


def test_config_accepts_a_forced_precision_and_accelerator_runs_it():
    from emoset_peft.engine.recipe import make_accelerator
    from emoset_peft.errors import EmoSetError

    config = validate(
        load_config(None, ["data.root=/x", "cpu=true", "train.mixed_precision=bf16!"])
    )
    assert config.train.mixed_precision == "bf16!"
    assert make_accelerator(config).mixed_precision == "bf16"
    with pytest.raises(EmoSetError, match="mixed_precision"):
        validate(load_config(None, ["data.root=/x", "train.mixed_precision=bf16!!"]))


def test_the_decision_is_logged_once_with_its_reason(monkeypatch, caplog):
    monkeypatch.setattr(precision, "_LOGGED", set())
    monkeypatch.setattr(precision, "cpu_features", lambda: AVX512_BF16_XEON)
    with caplog.at_level("INFO", logger="emoset_peft.engine.precision"):
        for _ in range(3):  # a study's cells: one line, not one per cell
            precision.resolve_mixed_precision("bf16", torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if "mixed_precision=bf16" in r.getMessage()]
    assert lines == [
        "mixed_precision=bf16 on cpu: running fp32 (this CPU has avx512_bf16 but no amx_bf16 "
        "(AMX): its bf16 GEMM is slower than fp32, so fp32)"
    ]
