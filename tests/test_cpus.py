"""The decode threads follow the CPUs this process may use (its affinity), not the core count."""

import os
import subprocess
import sys

import pytest

from emoset_peft.utils.cpus import default_decode_workers, usable_cpus


def test_default_decode_workers_is_the_affinity_size():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cpus() == expected and default_decode_workers() == expected >= 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_process_pinned_to_one_cpu_decodes_with_one_thread():
    cpu = min(os.sched_getaffinity(0))
    code = (
        f"import os; os.sched_setaffinity(0, {{{cpu}}}); "
        "from emoset_peft.utils.cpus import default_decode_workers; "
        "print(default_decode_workers(), os.cpu_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "1" and int(out[1]) == os.cpu_count()
