"""The one table of ``gpu_check.sh``: the gpu tests, bench_train_eval and the scaled-down study,
read from the files the steps left in the work folder (a missing file: that step failed).

    python benchmarks/_gpu_table.py WORKDIR [--device cuda] [--seconds N]

Exit status 1 when a step failed or a test failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table


def _status(work: Path, name: str) -> str:
    path = work / f"{name}.status"
    code = path.read_text().strip() if path.exists() else "not run"
    return {"0": "ok", "124": "timed out"}.get(code, f"failed ({code})")


def _json(work: Path, name: str) -> dict | None:
    try:
        return json.loads((work / name).read_text())
    except (OSError, ValueError):
        return None


def test_counts(work: Path) -> dict | None:
    try:
        root = ET.parse(work / "gpu_tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {
        key: sum(int(s.get(key, 0)) for s in suites)
        for key in ("tests", "failures", "errors", "skipped")
    }
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def rows_for(work: Path) -> tuple[list[list[str]], bool]:
    rows, ok = [], True
    counts = test_counts(work)
    status = _status(work, "gpu_tests")
    if counts is None:
        rows.append(["gpu tests (tests/test_gpu.py)", "-", "-", "-", status])
        ok = False
    else:
        failed = counts["failures"] + counts["errors"]
        ok &= failed == 0 and status == "ok"
        rows.append(
            [
                "gpu tests (tests/test_gpu.py)",
                f"{counts['passed']} passed",
                "-",
                "-",
                f"{failed} failed, {counts['skipped']} skipped ({status})",
            ]
        )
    bench = _json(work, "train_eval.json")
    status = _status(work, "train_eval")
    if bench is None:
        rows.append(["training / evaluation images/s", "-", "-", "-", status])
        ok = False
    else:
        ran = bench["ran"]
        what = f"{bench['backbone_size']} ViT, batch {bench['batch']}"
        for phase, label in (("train", "training"), ("eval", "evaluation")):
            r = bench[phase]
            rows.append(
                [
                    f"{label} images/s ({what})",
                    f"{r['toolkit']:.1f}",
                    f"{r['plain']:.1f}",
                    f"{r['ratio']:.2f}x",
                    (
                        f"MFU toolkit {100 * r['mfu_toolkit']:.1f}%, plain "
                        f"{100 * r['mfu_plain']:.1f}%"
                    ),
                ]
            )
        rows.append(
            [
                "precision (toolkit / plain)",
                str(ran["toolkit"]),
                str(ran["plain"]),
                "-",
                bench["precision"]["reason"],
            ]
        )
        rows.append(["peak for MFU", "-", "-", "-", bench["peak_source"]])
    study = _json(work, "study.json")
    status = _status(work, "study")
    if study is None:
        rows.append(["study wall s", "-", "-", "-", status])
        ok = False
    else:
        plain = study["plain_wall_seconds"]
        accuracy = study["mean_test_accuracy"]
        grid = study["grid"]
        rows.append(
            [
                (
                    f"study wall s ({study['cells']} cells: {', '.join(grid['methods'])} x k "
                    f"{grid['per_class']} x {len(grid['seeds'])} seed)"
                ),
                f"{study['toolkit_wall_seconds']:.0f}",
                f"{plain:.0f}" if plain else "-",
                f"{study['ratio']:.2f}x" if study["ratio"] else "-",
                "mean test accuracy "
                + ", ".join(f"{side} {acc:.3f}" for side, acc in accuracy.items()),
            ]
        )
    return rows, ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    rows, ok = rows_for(work)
    bench = _json(work, "train_eval.json") or {}
    device = bench.get("device_name") or args.device
    took = f", {args.seconds / 60:.1f} min" if args.seconds is not None else ""
    print(f"\n# gpu_check: {device} ({args.device}){took}; logs in {work}")
    print(table(["check", "toolkit", "plain", "toolkit vs plain", "detail"], rows))
    print("gpu_check: " + ("all steps ok" if ok else "SOME STEPS FAILED (see the logs)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
