"""The recipes shipped inside the package (``emoset_peft/recipes/``, package data).

A recipe is named by its path under that folder without ``.yaml``: ``vit_lora``,
``study/vit_methods``, ``accelerate/multi_gpu``; other files keep their suffix
(``slurm_multi_node.sh``). ``--config`` takes a file path or such a name; the old spelling
``recipes/vit_lora.yaml`` (from before the recipes moved into the package) still finds it.
Found through ``importlib.resources``, so an installed wheel finds them as a source checkout does.
"""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from emoset_peft.errors import EmoSetError

SUFFIXES = (".yaml", ".sh")  # what counts as a recipe in the folder


@dataclass(frozen=True)
class Recipe:
    name: str  # "vit_lora", "study/vit_methods", "slurm_multi_node.sh"
    path: Path

    @property
    def kind(self) -> str:
        """ "train", "study" or "launch" (accelerate configs and job scripts)."""
        if self.name.startswith("study/"):
            return "study"
        if self.name.startswith("accelerate/") or self.path.suffix != ".yaml":
            return "launch"
        return "train"

    def first_comment(self) -> str:
        """The first comment line (by convention the exact command that runs it)."""
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#!"):
                continue
            if line.startswith("#"):
                return line.lstrip("#").strip()
        return ""


def recipes_folder() -> Path:
    # Wheels and editable installs put package data on disk: the Traversable is a real folder.
    return Path(str(resources.files("emoset_peft") / "recipes"))


def packaged_recipes() -> list[Recipe]:
    folder = recipes_folder()
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in SUFFIXES:
            relative = path.relative_to(folder).as_posix()
            name = relative[: -len(".yaml")] if relative.endswith(".yaml") else relative
            found.append(Recipe(name, path))
    return found


def find_recipe(name: str) -> Recipe | None:
    """The packaged recipe called ``name`` (also as ``name.yaml`` or ``recipes/name.yaml``)."""
    wanted = str(name).replace("\\", "/").removeprefix("./").removeprefix("recipes/")
    by_name = {recipe.name: recipe for recipe in packaged_recipes()}
    return by_name.get(wanted) or by_name.get(wanted.removesuffix(".yaml"))


def resolve_recipe_path(path: str | Path) -> Path:
    """``--config``'s value as a file: the file itself, else the packaged recipe of that name."""
    if Path(path).is_file():
        return Path(path)
    recipe = find_recipe(str(path))
    if recipe is not None:
        return recipe.path
    raise EmoSetError(
        f"recipe {path} does not exist: no such file, and no packaged recipe of that "
        f"name{_close(path)}"
    )


def copy_recipe(name: str, dest: str | Path) -> Path:
    """Copy a packaged recipe to ``dest`` (a new file, or an existing folder to put it in)."""
    recipe = find_recipe(name)
    if recipe is None:
        raise EmoSetError(f"{name} is not a packaged recipe{_close(name)}")
    target = Path(dest)
    if target.is_dir():
        target = target / recipe.path.name
    if target.exists():
        raise EmoSetError(f"{target} exists; pick another destination or remove it first")
    if not target.parent.is_dir():
        raise EmoSetError(f"{target.parent} is not a folder; create it first")
    shutil.copyfile(recipe.path, target)
    return target


def _close(name) -> str:
    names = [recipe.name for recipe in packaged_recipes()]
    close = difflib.get_close_matches(str(name).removesuffix(".yaml"), names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{hint}; `emoset-peft recipes` lists them"
