"""A CLI command on a "full disk": a child process whose files may not grow past a few bytes
(RLIMIT_FSIZE), so a write fails with the real ``OSError: File too large`` a full disk gives."""

import os
import subprocess
import sys

_CHILD = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from emoset_peft.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_cli_with_file_limit(argv, max_bytes: int, timeout: int = 300):
    """``emoset-peft ARGV`` in a child whose files stop at ``max_bytes``; its CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(max_bytes), *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=timeout,
        check=False,
    )
