"""Quiet, informative runs: --version, -q/--no-progress on every command (before or after its
name), no third-party warnings a user cannot act on, a real images/s rate, the training loss in
log.jsonl."""

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from emoset_peft.cli import build_parser, main, parse_args
from emoset_peft.engine.trainer import images_per_second

REPO = Path(__file__).resolve().parents[1]


def _run_cli(args, cache=None):
    """``emoset-peft ARGS`` in a fresh process (its stderr as a user sees it); ``cache``: a
    fresh cache folder instead of the session's (which holds the decoded images and the
    precision verdict)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if cache is not None:
        env["EMOSET_PEFT_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "emoset_peft", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"emoset-peft {metadata.version('emoset-peft')}\n"


def _parsers(parser):
    """Every command's parser, nested ones (data inspect, cache ls) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _parsers(sub)


def test_every_command_takes_quiet_and_no_progress_before_or_after_its_name():
    parser = build_parser()
    names = []
    for name, sub in _parsers(parser):
        names.append(name)
        assert {"-q", "--quiet", "--no-progress"} <= set(sub._option_string_actions), name
    assert {"train", "study", "demo", "eval", "report", "cache", "inspect", "recipes"} <= set(names)

    for argv in (["-q", "train", "a=1"], ["train", "a=1", "-q"], ["train", "--quiet"]):
        args = parse_args(parser, argv)
        assert args.quiet and args.no_progress  # -q implies no progress bars
    args = parse_args(parser, ["--no-progress", "study"])  # study has its own default False
    assert args.no_progress and not args.quiet
    args = parse_args(parser, ["data", "inspect", "ROOT", "--no-progress"])
    assert args.no_progress and not args.quiet
    args = parse_args(parser, ["report", "DIR"])
    assert not args.no_progress and not args.quiet
    for command in ("train", "study"):  # overrides on both sides of a flag
        args = parse_args(parser, [command, "seeds=[0]", "-q", "output_dir=x", "--config", "c"])
        assert args.overrides == ["seeds=[0]", "output_dir=x"] and args.quiet, command


def test_quiet_prints_no_info_lines(synthetic_root, tmp_path):
    loud = _run_cli(["data", "inspect", str(synthetic_root)], cache=tmp_path / "loud")
    assert loud.returncode == 0 and "INFO emoset_peft.data.emoset: indexed" in loud.stderr
    quiet = _run_cli(["data", "inspect", str(synthetic_root), "-q"], cache=tmp_path / "quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and "amusement" in quiet.stdout


@pytest.mark.slow  # one tiny training run in a fresh process, its stderr read as a user sees it
def test_a_quiet_tiny_train_prints_its_result_and_nothing_else(tiny_run, tmp_path):
    # -q after the command's name; the recipe trains LoRA (peft's FutureWarning) and imports
    # bitsandbytes (its CPU kernels warning): neither may reach the user.
    done = _run_cli(["train", "--config", "vit_lora", *tiny_run("run"), "-q"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "" and done.stdout.startswith("test accuracy")

    # log.jsonl: the mean training loss over each log interval (every 5 steps, and before each
    # evaluation), beside the evaluations.
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [entry for entry in lines if "train_loss" in entry]
    assert [entry["step"] for entry in train] == [5, 6, 10, 12]  # eval_every=6, 12 steps
    assert [entry["train_steps"] for entry in train] == [5, 1, 4, 2]
    assert all(0 < entry["train_loss"] < 5 and "lr" in entry for entry in train)
    assert [entry["step"] for entry in lines if "val_loss" in entry] == [6, 12]


def test_the_filters_are_named_in_one_place_and_leave_other_warnings_alone(capsys):
    import logging
    import warnings

    from emoset_peft.utils.warnings import install

    install()
    install()  # idempotent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        install()
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("something else", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(ops.filters) == 1
    record = ops.makeRecord(
        ops.name, logging.WARNING, "f", 1, "Failed to load CPU gemm_4bit_forward from x", None, None
    )
    other = ops.makeRecord(ops.name, logging.WARNING, "f", 1, "another problem", None, None)
    assert not ops.filter(record) and ops.filter(other)


@pytest.mark.parametrize(
    "images, seconds, shown",
    [(8, 12.0, "0.667"), (40, 2.5, "16"), (5, 0.5, "10"), (1000, 2.0, "500"), (8, 0.0, "n/a")],
)
def test_images_per_second_is_a_real_rate_at_any_speed(images, seconds, shown):
    assert images_per_second(images, seconds) == shown


def test_a_closed_pipe_ends_quietly():
    """`emoset-peft recipes | head -1`: the reader leaves before the output is written (here
    `true`, which reads nothing); no traceback, and SIGPIPE's status like a Unix tool."""
    import subprocess
    import sys

    shell = f"{sys.executable} -m emoset_peft recipes | true; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


def test_importing_bitsandbytes_offline_prints_nothing():
    """bitsandbytes asks the `kernels` package for an optional CPU kernel at import; offline,
    `kernels` first says that it cannot check that kernel's publisher."""
    code = "import emoset_peft, bitsandbytes"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]


@pytest.mark.slow  # two processes under accelerate launch
@pytest.mark.xfail(
    strict=True,
    reason="torch's reducer prints this from C++ (no Python filter reaches it): the fix is to "
    "pass find_unused_parameters=True only for models with trainable parameters the loss never "
    "reaches (engine/recipe.py make_accelerator), then drop this marker",
)
def test_a_quiet_two_process_train_prints_no_ddp_warning(tiny_run):
    from two_processes import run_two_cpu_processes

    done = run_two_cpu_processes("train", *tiny_run("ddp", cpu="true"), "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "find_unused_parameters" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.startswith("test accuracy")
