"""Two real CPU processes (gloo) under ``accelerate launch``, started the way the README says:
the packaged ``emoset_peft/recipes/accelerate/cpu_2proc.yaml`` (``accelerate launch --cpu
--num_processes 2`` would start only one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_two_cpu_processes(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch ... -m emoset_peft ARGS`` on two CPU processes; the caller checks the
    exit status (some tests expect a failure)."""
    env = dict(
        os.environ,
        ACCELERATE_USE_CPU="true",
        OMP_NUM_THREADS="1",  # two processes on two cores: one thread each
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO),
    )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "emoset_peft/recipes/accelerate/cpu_2proc.yaml"),
        "--main_process_port",
        "0",
        "-m",
        "emoset_peft",
        *args,
    ]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
