"""``emoset-peft recipes [ls]`` / ``emoset-peft recipes cp NAME DEST``: the packaged recipes.

Like torchtune's ``tune ls`` / ``tune cp``: list the recipes that ship with the package (each
with its first comment line, the command that runs it), or copy one out to edit.
"""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "recipes",
        help="list the packaged recipes, or copy one to edit",
        description="List the recipes that ship with emoset-peft (pass a NAME to "
        "--config), or copy one to a file to edit: emoset-peft recipes cp vit_lora my.yaml",
    )
    parser.set_defaults(func=run_ls)
    commands = parser.add_subparsers(dest="recipes_command", metavar="{ls,cp}")
    commands.add_parser("ls", help="list the packaged recipes").set_defaults(func=run_ls)
    cp = commands.add_parser(
        "cp",
        help="copy a packaged recipe to edit",
        description="Copy the packaged recipe NAME to DEST (a new file, or a folder to put it "
        "in). An existing file is never overwritten.",
    )
    cp.add_argument("name", metavar="NAME", help="e.g. vit_lora, study/vit_methods")
    cp.add_argument("dest", metavar="DEST", help="file or folder to copy it to")
    cp.set_defaults(func=run_cp)


KIND_TITLES = {
    "train": "training recipes (emoset-peft train --config NAME)",
    "study": "study recipes (emoset-peft study --config NAME)",
    "launch": "launch configs (emoset-peft recipes cp NAME DEST, then pass DEST)",
}


def run_ls(args) -> int:
    from emoset_peft.utils.recipes import packaged_recipes

    recipes = packaged_recipes()
    width = max(len(recipe.name) for recipe in recipes)
    for kind, title in KIND_TITLES.items():
        print(title)
        for recipe in recipes:
            if recipe.kind == kind:
                print(f"  {recipe.name.ljust(width)}  {recipe.first_comment()}")
    return 0


def run_cp(args) -> int:
    from emoset_peft.utils.recipes import copy_recipe

    print(f"wrote {copy_recipe(args.name, args.dest)}")
    return 0
