"""Fixtures shared by the suite live in fixtures_*.py (one module per area) and are imported here."""

import os
import tempfile

import pytest

# Caches (EmoSet index, decoded images) go to a throwaway folder, never the user's ~/.cache.
os.environ.setdefault("EMOSET_PEFT_CACHE", tempfile.mkdtemp(prefix="emoset-peft-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fixtures_data import *  # noqa: E402,F401,F403
from fixtures_models import *  # noqa: E402,F401,F403
from fixtures_train import *  # noqa: E402,F401,F403


@pytest.fixture(autouse=True)
def third_party_warning_filters():
    """pytest drops the warning filters installed while it imported the package (collection
    runs in its own catch_warnings); put emoset_peft/utils/warnings.py's back for each test."""
    from emoset_peft.utils.warnings import install

    install()
