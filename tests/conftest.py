"""Fixtures shared by the suite live in fixtures_*.py (one module per area) and are imported here."""

from fixtures_data import *  # noqa: F401,F403
from fixtures_models import *  # noqa: F401,F403
