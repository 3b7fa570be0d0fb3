"""Recipes ship with the package: package-data covers them, --config NAME finds them (also from
an installed layout), `emoset-peft recipes` lists them and `recipes cp` copies one to edit."""

import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emoset_peft.cli import main
from emoset_peft.config import load_config
from emoset_peft.errors import EmoSetError
from emoset_peft.study.grid import load_study_config
from emoset_peft.utils.recipes import packaged_recipes, recipes_folder

REPO = Path(__file__).resolve().parents[1]
try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # 3.10
    tomllib = pytest.importorskip("tomli")


def _package_data() -> dict[str, list[str]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["tool"]["setuptools"]["package-data"]


def _installed_files() -> list[Path]:
    """What a wheel holds: every module of the emoset_peft packages plus their package-data."""
    files = []
    for package, globs in {"emoset_peft": [], **_package_data()}.items():
        base = REPO / package.replace(".", "/")
        files += [p for glob in globs for p in base.glob(glob) if p.is_file()]
    files += [p for p in (REPO / "emoset_peft").rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(set(files))


def test_package_data_covers_every_recipe_file():
    folder = recipes_folder()
    assert folder == REPO / "emoset_peft" / "recipes"
    on_disk = {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert len(on_disk) >= 16
    covered = set(_installed_files())
    assert on_disk <= covered, sorted(str(p) for p in on_disk - covered)
    globs = _package_data()["emoset_peft"]  # and no glob that matches nothing
    for glob in globs:
        assert any(fnmatch.fnmatch(p.relative_to(folder.parent).as_posix(), glob) for p in on_disk)
    assert not (REPO / "recipes").exists()  # one copy of every recipe


def test_bare_names_and_the_old_paths_find_the_packaged_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nowhere near the repository
    by_path = load_config(recipes_folder() / "vit_lora.yaml", ["data.root=/x"])
    for name in ("vit_lora", "vit_lora.yaml", "recipes/vit_lora.yaml"):
        assert load_config(name, ["data.root=/x"]) == by_path
    study = load_study_config("study/vit_methods")
    assert "lora" in study.methods and study.output_dir == "studies/vit_methods"
    with pytest.raises(EmoSetError, match="did you mean vit_lora") as err:
        load_config("vit_lroa")
    assert "\n" not in str(err.value) and "emoset-peft recipes" in str(err.value)


def test_an_installed_layout_finds_its_recipes(tmp_path):
    site = tmp_path / "site-packages"
    for path in _installed_files():
        target = site / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    code = (
        "import emoset_peft, sys\n"
        "from emoset_peft.config import load_config\n"
        "from emoset_peft.cli import main\n"
        "assert emoset_peft.__file__.startswith(sys.argv[1]), emoset_peft.__file__\n"
        "print(load_config('clip_lora', ['data.root=/x']).model.method)\n"
        "main(['recipes'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "lora"
    for recipe in packaged_recipes():
        assert recipe.name in done.stdout


def test_recipes_lists_every_recipe_with_its_first_comment_line(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert main(["recipes", "ls"]) == 0
    assert capsys.readouterr().out == out
    lines = out.splitlines()
    for recipe in packaged_recipes():
        (line,) = [line for line in lines if line.split()[0] == recipe.name]
        assert recipe.first_comment() in line
    names = {recipe.name for recipe in packaged_recipes()}
    assert {"vit_lora", "clip_zeroshot", "study/vit_methods", "accelerate/cpu_2proc"} <= names
    assert "emoset-peft train --config vit_lora data.root=" in out


def test_recipes_cp_copies_and_never_overwrites(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    assert main(["recipes", "cp", "vit_lora", str(dest)]) == 0
    assert dest.read_bytes() == (recipes_folder() / "vit_lora.yaml").read_bytes()
    dest.write_text("# my edits\n")
    assert main(["recipes", "cp", "vit_lora", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{dest} exists" in err
    assert dest.read_text() == "# my edits\n"

    folder = tmp_path / "configs"
    folder.mkdir()
    assert main(["recipes", "cp", "study/vit_methods", str(folder)]) == 0
    assert (folder / "vit_methods.yaml").is_file()
    assert main(["recipes", "cp", "slurm_multi_node.sh", str(folder)]) == 0
    assert (folder / "slurm_multi_node.sh").is_file()
    capsys.readouterr()
    assert main(["recipes", "cp", "vit_lroa", str(folder)]) == 2
    assert "did you mean vit_lora" in capsys.readouterr().err
