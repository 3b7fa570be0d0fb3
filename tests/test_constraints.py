"""constraints.txt records the versions the suite passed with: every dependency that
pyproject.toml names (the package's and the dev extra's) is pinned there, inside its range, so
a fresh `bash scripts/test.sh` installs exactly what was tested."""

from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # 3.10
    tomllib = pytest.importorskip("tomli")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        [spec] = requirement.specifier  # one exact version per package
        assert spec.operator == "==", line
        if requirement.marker is None or requirement.marker.evaluate(default_environment()):
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_every_declared_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pins = _pins()
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} ({text}) is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {text}"
        )


def test_the_install_scripts_use_the_constraints():
    for script in ("scripts/test.sh", "scripts/demo.sh"):
        installs = [
            line for line in (REPO / script).read_text().splitlines() if "pip install" in line
        ]
        assert installs and all("-c constraints.txt" in line for line in installs), script
