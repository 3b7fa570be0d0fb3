"""``emoset-peft export RUN OUT``: a merged, stand-alone transformers folder (see deploy/export.py)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="merge a run's adapter into a stand-alone transformers model folder",
        description="Merge RUN's adapter into the backbone's weights and write OUT: config.json "
        "(with the emotion names), model.safetensors, preprocessor_config.json and a model "
        "card. Stock transformers loads it: AutoModelForImageClassification.from_pretrained(OUT) "
        'or pipeline("image-classification", model=OUT). Methods that fold into the weights, '
        "on ViT, DINOv2 and SigLIP backbones.",
    )
    parser.add_argument("run", help="a run folder (emoset-peft train) or an adapter folder")
    parser.add_argument("out", help="the folder to write (new or empty)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if an earlier export wrote it (any other folder is left as it is)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from emoset_peft.deploy.export import export_model

    out = export_model(args.run, args.out, overwrite=args.overwrite)
    print(f"exported {args.run} -> {out} (load it with AutoModelForImageClassification)")
    return 0
