"""``emoset-peft push RUN REPO_ID``: upload a run's adapter folder with its model card (deploy/hub.py)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a run's adapter with its model card to the Hugging Face Hub",
        description="Upload RUN's adapter folder (or an adapter folder) to the Hub model repo "
        "REPO_ID (created if missing), with a model card holding the method, data, validation "
        "protocol, test results and loading code. Load it back with "
        "emoset_peft.EmoSetModel.from_pretrained(REPO_ID).",
    )
    parser.add_argument("run", help="a run folder (emoset-peft train) or an adapter folder")
    parser.add_argument("repo_id", help="owner/name of the Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", help="a Hub token (default: $HF_TOKEN or `hf auth login`)")
    parser.add_argument("--revision", help="branch to push to (default: main)")
    parser.add_argument("--message", help="commit message")
    parser.set_defaults(func=run)


def run(args) -> int:
    from emoset_peft.deploy.hub import push_run

    url = push_run(
        args.run,
        args.repo_id,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        commit_message=args.message,
    )
    print(f"pushed {args.run} -> {args.repo_id} ({url})")
    return 0
