"""``emoset-peft demo``: synthetic EmoSet + a tiny pretrained backbone + a small scaling study."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a small scaling study on built-in synthetic data (about 2 minutes)"
    )
    parser.add_argument(
        "--workdir",
        default="emoset_demo",
        help="folder for the demo data, backbone and study (default: emoset_demo)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    import time

    from emoset_peft.demo import run_demo

    started = time.perf_counter()
    report = run_demo(args.workdir, show_progress=not args.no_progress)
    print(f"demo done in {time.perf_counter() - started:.0f} s; report: {report}")
    return 0
