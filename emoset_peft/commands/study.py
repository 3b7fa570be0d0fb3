"""``emoset-peft study --config study/NAME [key=value ...]``: run a scaling study.

Under ``accelerate launch --num_processes N -m emoset_peft study ...`` the cells are shared out.
"""

from __future__ import annotations

from emoset_peft.commands.intermixed import intermixed


def register(subparsers) -> None:
    parser = intermixed(
        subparsers.add_parser(
            "study",
            help="run a grid of method x images-per-class x seed, resumably",
            description="Run a low-data scaling study. Example: emoset-peft study --config "
            "study/vit_methods data.root=/data/EmoSet-118K seeds=[0,1,2]",
        )
    )
    parser.add_argument(
        "--config",
        help="YAML study recipe: a file, or a packaged recipe's name (emoset-peft recipes)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="study keys (seeds=[0,1], per_class=[1,4]) or base recipe keys "
        "(data.root=..., train.lr=...)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from emoset_peft.study.grid import load_study_config
    from emoset_peft.study.runner import run_study
    from emoset_peft.utils.dist import is_main_process

    study = load_study_config(args.config, args.overrides)
    out = run_study(study, show_progress=not args.no_progress)
    if is_main_process():
        print(f"results: {out / 'results.csv'}")
        if study.report:
            print(f"report:  {out / 'report.md'}")
    return 0
