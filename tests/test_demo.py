"""The demo's study recipe and printed summary (the demo itself runs in scripts/demo.sh)."""

from emoset_peft.demo import DEMO_DATA, demo_study, summary_lines
from emoset_peft.study.grid import expand


def test_demo_grid_meets_the_issue_13_shape(tmp_path):
    study = demo_study(tmp_path / "data", tmp_path / "bb", tmp_path / "study", tmp_path / "c")
    cells = expand(study)
    assert len(study.methods) >= 3 and len(study.seeds) >= 3
    assert len([k for k in study.per_class if isinstance(k, int) and k >= 1]) >= 4
    assert len(cells) == len(study.methods) * len(study.per_class) * len(study.seeds)
    assert DEMO_DATA["train_per_class"] >= 256 and DEMO_DATA["test_per_class"] >= 250
    assert 0.05 <= DEMO_DATA["label_noise"] <= 0.15
    # Training subsets are drawn from the pool: the largest k leaves most images to other seeds.
    assert max(study.per_class) <= DEMO_DATA["train_per_class"] // 8


def test_summary_shows_each_method_at_the_smallest_and_largest_k():
    rows = [
        {"method": m, "per_class": str(k), "test_accuracy": str(acc)}
        for m, base in (("lora", 0.2), ("ia3", 0.25))
        for k, acc in ((1, base), (1, base + 0.02), (4, base + 0.1), (32, base + 0.4))
    ]
    rows.append({"method": "ia3", "per_class": "32", "test_accuracy": "0.0", "status": "failed"})
    lines = summary_lines(rows)
    assert lines == [
        "    lora: k=1  21.0%  ->  k=32  60.0%  (+39.0 pp)",
        "     ia3: k=1  26.0%  ->  k=32  65.0%  (+39.0 pp)",
    ]
