"""How many CPUs this process may use: its affinity mask, not the machine's core count.

A job under a batch scheduler, ``taskset`` or a container's cpuset sees every core in
``os.cpu_count()`` but may run on only a few; threads beyond those only take turns.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (``sched_getaffinity``), else ``os.cpu_count()``, else 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def default_decode_workers() -> int:
    """Threads decoding JPEGs into the cache: one per usable CPU (PIL releases the GIL while
    it decodes, so the threads run in parallel)."""
    return usable_cpus()
