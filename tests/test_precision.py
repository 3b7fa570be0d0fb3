"""Precision by measurement: the rule (rates -> decision), the probe's cache, a forced choice."""

import json
import math

import pytest
import torch

from emoset_peft.config import load_config, validate
from emoset_peft.engine import precision, precision_probe
from emoset_peft.engine.precision import MARGIN, choose_precision

# GEMM rates measured on the three 2-core machine types this project has met (GFLOP/s).
AMX_XEON = {"bf16_gflops": 3843.9, "fp32_gflops": 438.3}
AVX512_BF16_XEON = {"bf16_gflops": 196.0, "fp32_gflops": 330.0}  # no AMX: bf16 is slower


def test_amx_cpu_measured_faster_in_bf16_runs_bf16():
    decision = choose_precision("bf16", "cpu", True, AMX_XEON)
    assert decision.resolved == "bf16" and decision.measured == AMX_XEON
    assert "3844 GFLOP/s vs fp32 438" in decision.reason and "so bf16" in decision.reason


def test_avx512_bf16_cpu_without_amx_runs_fp32_although_bf16_is_native():
    decision = choose_precision("bf16", "cpu", True, AVX512_BF16_XEON)
    assert decision.resolved == "no" and "so fp32" in decision.reason
    assert decision.measured == AVX512_BF16_XEON


def test_avx2_cpu_without_native_bf16_runs_fp32_without_measuring():
    decision = choose_precision("bf16", "cpu", False, None)
    assert decision.resolved == "no" and decision.measured is None
    assert "emulated" in decision.reason


def test_bf16_must_win_by_the_margin():
    just_under = {"bf16_gflops": 100 * MARGIN - 1, "fp32_gflops": 100.0}
    at_margin = {"bf16_gflops": 100 * MARGIN, "fp32_gflops": 100.0}
    assert choose_precision("bf16", "cpu", True, just_under).resolved == "no"
    assert choose_precision("bf16", "cpu", True, at_margin).resolved == "bf16"


def test_gpus_keep_bf16_where_supported_and_fp32_is_never_changed():
    assert choose_precision("bf16", "cuda", True).resolved == "bf16"
    assert choose_precision("bf16", "cuda", False).resolved == "no"
    assert choose_precision("fp16", "cuda", True).resolved == "fp16"
    assert choose_precision("no", "cpu", True, AMX_XEON).resolved == "no"


def test_forced_choice_is_kept_even_where_fp32_measures_faster_or_bf16_is_emulated():
    forced = choose_precision("bf16!", "cpu", True, AVX512_BF16_XEON)
    assert forced.resolved == "bf16" and forced.requested == "bf16!"
    assert "forced" in forced.reason
    emulated = choose_precision("bf16!", "cpu", False)
    assert emulated.resolved == "bf16" and "emulated" in emulated.reason


@pytest.fixture
def probe_cache(tmp_path, monkeypatch):
    """A fresh cache folder for the probe and no rates remembered from earlier tests."""
    monkeypatch.setenv("EMOSET_PEFT_CACHE", str(tmp_path))
    monkeypatch.setattr(precision_probe, "_MEMO", {})
    return tmp_path / precision_probe.CACHE_FILE


def test_real_probe_returns_finite_positive_rates_quickly():
    rates = precision_probe.measure_gemm_rates("bf16", repeats=1)
    for key in ("bf16_gflops", "fp32_gflops"):
        assert math.isfinite(rates[key]) and rates[key] > 0
    assert rates["seconds"] < 30  # ~0.1-0.3 s on a quiet 2-core machine


def test_probe_is_cached_in_the_cache_folder_and_not_measured_again(probe_cache, monkeypatch):
    first = precision_probe.cached_gemm_rates("bf16")
    assert first["cached"] is False
    stored = json.loads(probe_cache.read_text())["entries"]
    key = precision_probe.cache_key("bf16")
    assert set(stored) == {key} and stored[key]["bf16_gflops"] == first["bf16_gflops"]
    assert "torch " + torch.__version__ in key and f"{torch.get_num_threads()} threads" in key
    # A second process reads the file: rates planted there come back, so nothing was measured.
    stored[key].update(bf16_gflops=11.0, fp32_gflops=22.0)
    probe_cache.write_text(json.dumps({"version": 1, "entries": stored}))
    monkeypatch.setattr(precision_probe, "_MEMO", {})
    second = precision_probe.cached_gemm_rates("bf16")
    assert second["cached"] is True
    assert (second["bf16_gflops"], second["fp32_gflops"]) == (11.0, 22.0)


def test_a_corrupt_probe_cache_is_measured_again(probe_cache):
    probe_cache.write_text("{not json")
    rates = precision_probe.cached_gemm_rates("bf16")
    assert rates["cached"] is False and rates["fp32_gflops"] > 0
    assert precision_probe.cache_key("bf16") in json.loads(probe_cache.read_text())["entries"]


def _plant(probe_cache, bf16, fp32):
    key = precision_probe.cache_key("bf16")
    probe_cache.write_text(
        json.dumps({"version": 1, "entries": {key: {"bf16_gflops": bf16, "fp32_gflops": fp32}}})
    )


def test_forced_bf16_is_kept_on_this_cpu_when_its_probe_prefers_fp32(probe_cache):
    cpu = torch.device("cpu")
    _plant(probe_cache, 196.0, 330.0)  # this machine's cached probe: fp32 is faster
    assert precision.resolve_mixed_precision("bf16", cpu) == "no"
    assert precision.resolve_mixed_precision("bf16!", cpu) == "bf16"
    record = precision.precision_record("bf16!", cpu)
    assert record["requested"] == "bf16!" and record["resolved"] == "bf16"
    assert record["measured"] is None and "forced" in record["reason"]


def test_record_says_what_the_accelerator_ran_when_a_caller_chose_otherwise(probe_cache):
    _plant(probe_cache, 196.0, 330.0)
    record = precision.precision_record("bf16", torch.device("cpu"), ran="bf16")
    assert record["resolved"] == "bf16" and "set by the caller" in record["reason"]
    assert precision.precision_record("no", torch.device("cpu"), ran="no")["reason"] == (
        "fp32 requested"
    )


def test_decision_on_this_cpu_follows_its_cached_rates(probe_cache):
    cpu = torch.device("cpu")
    if not precision.native_low_precision(cpu, torch.bfloat16):
        pytest.skip("this CPU has no native bf16: no probe runs")
    _plant(probe_cache, 3000.0, 400.0)
    record = precision.precision_record("bf16", cpu)
    assert record["resolved"] == "bf16"
    assert record["measured"] == {"bf16_gflops": 3000.0, "fp32_gflops": 400.0}
    json.dumps(record)  # metrics.json takes it as it is


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


def test_the_decision_is_logged_once_with_its_reason(probe_cache, monkeypatch, caplog):
    monkeypatch.setattr(precision, "_LOGGED", set())
    _plant(probe_cache, 196.0, 330.0)
    with caplog.at_level("INFO", logger="emoset_peft.engine.precision"):
        for _ in range(3):  # a study's cells: one line, not one per cell
            precision.resolve_mixed_precision("bf16", torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if "mixed_precision=bf16" in r.getMessage()]
    if precision.native_low_precision(torch.device("cpu"), torch.bfloat16):
        expected = (
            "mixed_precision=bf16 on cpu: running fp32 (bf16 GEMM 196 GFLOP/s vs fp32 330 "
            "at ViT shapes: 0.59x < 1.15x, so fp32)"
        )
        assert lines == [expected]
    else:
        assert len(lines) == 1 and "emulated" in lines[0]
