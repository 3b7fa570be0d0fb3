"""YAML aliases in recipes and overrides: an expansion bomb is refused in one line before it is
built, and a wrong value is quoted short in its type error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emoset_peft.config import MAX_YAML_VALUES, load_config, validate
from emoset_peft.errors import EmoSetError

REPO = Path(__file__).resolve().parents[1]


def billion_laughs(levels: int, width: int = 9) -> str:
    """A recipe whose data.root is ``width ** levels`` strings, written as nested aliases."""
    anchors = ["&a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        anchors.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "data:\n  root: [" + ", ".join(anchors) + "]\n"


# The CLI in a child process, under a memory ceiling (512 MiB above what the imports took) and a
# timeout, so that a loader which builds the bomb fails this test instead of hanging the suite.
CHILD = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys, time
    from emoset_peft.cli import main
    import emoset_peft.engine.recipe  # the train command's imports (torch), before the ceiling
    pages = int(open("/proc/self/statm").read().split()[0])
    ceiling = pages * resource.getpagesize() + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--config", sys.argv[1]])
    print(json.dumps({"code": code, "seconds": time.perf_counter() - start, "err": err.getvalue()}))
    """
)


def test_a_nine_level_alias_bomb_is_refused_in_one_line_within_a_second(tmp_path):
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(billion_laughs(9))  # 9 ** 9 = 387,420,489 strings once written out
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(recipe)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    err = result["err"].strip()
    assert result["code"] == 2
    assert "\n" not in err and "lol" not in err, err
    assert err.startswith(f"emoset-peft train: error: recipe {recipe}: the aliases in the value")
    assert f"expand to more than {MAX_YAML_VALUES:,} values" in err
    assert "instead of nesting aliases" in err
    assert result["seconds"] < 0.5


def test_an_alias_bomb_in_an_override_names_the_override():
    parts = ", ".join(f"&b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, 9))
    bomb = f"[&b0 [x, x, x, x, x, x, x, x, x], {parts}]"
    with pytest.raises(EmoSetError, match=r"^override model.options: the aliases in the value"):
        load_config(None, [f"model.options={bomb}"])


def test_an_alias_into_its_own_value_is_refused(tmp_path):
    recipe = tmp_path / "loop.yaml"
    recipe.write_text("model:\n  targets: &t [q, *t]\n")
    with pytest.raises(EmoSetError, match=r"line 2, column 12 contains an alias to itself"):
        load_config(recipe)


def test_aliases_and_merge_keys_within_the_budget_still_load(tmp_path):
    recipe = tmp_path / "shared.yaml"
    recipe.write_text(
        "data:\n  root: &root /data/emoset\n  cache_dir: *root\n"
        "model:\n  options: &lora {r: 8, alpha: 16}\n"
        "train: {<<: {lr: 0.01, seed: 3}, batch_size: 4}\n"
    )
    config = load_config(recipe)
    assert config.data.cache_dir == "/data/emoset" and config.model.options == {"r": 8, "alpha": 16}
    assert (config.train.lr, config.train.seed, config.train.batch_size) == (0.01, 3, 4)


def test_a_long_wrong_value_is_quoted_short(tmp_path):
    recipe = tmp_path / "long.yaml"
    recipe.write_text("data:\n  root: [" + ", ".join(["/some/long/folder/name"] * 5000) + "]\n")
    with pytest.raises(EmoSetError) as err:
        load_config(recipe)
    message = str(err.value)
    assert message.startswith("config.data.root must be a string, got ['/some/long/folder/name',")
    assert message.endswith(", ...]") and len(message) < 200, message
    refused = load_config(None, ["data.root=x", "train.mixed_precision=" + "b" * 10_000])
    with pytest.raises(EmoSetError) as err:
        validate(refused)
    message = str(err.value)
    assert message.startswith("train.mixed_precision='bbb") and "bbb...bbb" in message
    assert len(message) < 200, message
