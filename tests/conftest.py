"""Fixtures shared by the suite live in fixtures_*.py (one module per area) and are imported here."""

import atexit
import os
import shutil
import tempfile

# Caches (EmoSet index, decoded images) go to a throwaway folder, never the user's ~/.cache,
# removed when the run ends so that repeated runs do not fill the disk.
if "EMOSET_PEFT_CACHE" not in os.environ:
    _test_cache = tempfile.mkdtemp(prefix="emoset-peft-test-cache-")
    os.environ["EMOSET_PEFT_CACHE"] = _test_cache
    atexit.register(shutil.rmtree, _test_cache, ignore_errors=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fixtures_data import *  # noqa: E402,F401,F403
from fixtures_models import *  # noqa: E402,F401,F403
from fixtures_train import *  # noqa: E402,F401,F403


def pytest_configure(config):
    """pytest resets warning filters around every test phase (fixture setup included) to its own
    ``filterwarnings`` list: add emoset_peft/utils/warnings.py's entries to that list, so the
    third-party warnings are named in that one place and stay hidden in every phase."""
    from emoset_peft.utils.warnings import WARNINGS

    for category, message in WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")
