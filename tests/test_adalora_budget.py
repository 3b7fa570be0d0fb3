"""AdaLoRA on any step budget: its rank schedule (tinit / tfinal from the run's steps) fits runs of
1, 2, 3 steps as well as long ones, and options that peft's RankAllocator cannot prune with are
one line before any image is decoded."""

import json

import pytest

from emoset_peft.cli import main
from emoset_peft.config import load_config
from emoset_peft.engine.recipe import preflight
from emoset_peft.errors import EmoSetError
from emoset_peft.models import build_model
from emoset_peft.models.options import AdaLoraOptions
from emoset_peft.models.peft_methods import adalora_schedule

R, INIT_R = 2, 4


def adalora_run(tiny_run, steps, **extra):
    return tiny_run(
        f"adalora{steps}",
        **{
            "model.method": "adalora",
            "model.options.r": R,
            "model.options.init_r": INIT_R,
            "train.min_steps": 1,
            "train.max_steps": steps,
            "train.eval_every": steps,
            **extra,
        },
    )


@pytest.mark.parametrize("steps", [1, 2, 3, 12])
def test_adalora_trains_on_any_step_budget(tiny_run, tmp_path, steps, caplog):
    assert main(["train", *adalora_run(tiny_run, steps)]) == 0
    run = tmp_path / f"adalora{steps}"
    assert json.loads((run / "metrics.json").read_text())["steps"] == steps
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["total_step"] == steps and saved["tinit"] + saved["tfinal"] < steps
    if steps == 1:  # step 0 is the warm-up: nothing is pruned, and the log says so
        assert saved["rank_pattern"] is None
        assert "keeps init_r=4" in caplog.text
        return
    # The final allocation (step total_step - tfinal, steps counted from 0) is a step the run
    # takes, so the adapter ends at its target budget: r ranks per module on average.
    kept = [sum(mask) for mask in saved["rank_pattern"].values()]
    assert kept and sum(kept) <= R * len(kept)


def test_default_schedule_leaves_a_final_allocation_step_for_every_budget():
    for steps in range(1, 400):
        tinit, tfinal = adalora_schedule(AdaLoraOptions(), steps)
        assert 0 <= tinit and tinit + tfinal <= steps - 1  # peft: tinit < total_step - tfinal
        assert tfinal >= (1 if steps >= 2 else 0)
        if steps >= 10:  # long runs keep the 10% / 20% split
            assert (tinit, tfinal) == (steps // 10, steps // 5)
    # One value given: the derived other one makes room for it, the given one is kept.
    assert adalora_schedule(AdaLoraOptions(tinit=1), 2) == (1, 0)
    assert adalora_schedule(AdaLoraOptions(tfinal=2), 3) == (0, 2)


def test_init_r_not_above_r_is_one_line_before_decoding(tiny_run, tmp_path, capsys):
    """peft prunes from init_r ranks per module to r on average: torch.kthvalue(k=init - target)
    is out of range when init_r <= r, whatever the step budget."""
    for r, init_r in ((8, 8), (16, 12)):
        args = adalora_run(tiny_run, 12, **{"model.options.r": r, "model.options.init_r": init_r})
        with pytest.raises(EmoSetError, match="model.options.init_r"):
            preflight(load_config(None, args))  # what train checks before decoding the data
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"model.options.init_r={init_r}" in err and f"model.options.r={r}" in err
        assert not (tmp_path / "adalora12").exists()


def test_schedule_too_long_for_the_budget_names_keys_and_minimum(tiny_vit_dir):
    with pytest.raises(EmoSetError) as caught:
        build_model(tiny_vit_dir, "adalora", total_steps=3, tinit=2, tfinal=1)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("model.options.tinit=2", "model.options.tfinal=1", "= 4 optimizer steps", "has 3"):
        assert part in message
    assert "train.max_steps" in message


def test_a_trained_adalora_adapter_loads_without_the_rank_pattern_warning(tiny_vit_dir, tmp_path):
    """Its saved rank_pattern ("<module>.lora_E": kept ranks) is peft's own format, applied on
    load; peft's generic pattern check calls it unmatched. Filtered by name (utils/warnings.py),
    as the user's session has it; a LoRA rank_pattern key that matches nothing still warns."""
    import warnings

    import peft
    import torch
    from transformers import AutoModelForImageClassification

    import emoset_peft as ep
    from emoset_peft.models.wrapper import after_optimizer_step

    torch.manual_seed(0)
    model = build_model(tiny_vit_dir, "adalora", total_steps=3, r=R, init_r=INIT_R)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for step in range(3):
        model(pixels, labels=labels).loss.backward()
        optimizer.step()
        after_optimizer_step(model, step)
        optimizer.zero_grad()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert saved and all(key.endswith(".lora_E") for key in saved)
    with warnings.catch_warnings(record=True) as caught:
        loaded = ep.load_adapter(tmp_path).eval()
    assert not [w for w in caught if "rank_pattern" in str(w.message)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, model.eval()(pixels).logits)

    base = AutoModelForImageClassification.from_pretrained(tiny_vit_dir, num_labels=2)
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], rank_pattern={"no_such_proj": 4})
    with pytest.warns(RuntimeWarning, match="rank_pattern keys did not match"):
        peft.get_peft_model(base, config)


@pytest.mark.parametrize(
    "wording",
    [
        "did not match any targeted module and were ignored",  # peft 0.21
        "did not match any targeted module or parameter and were ignored",  # peft 0.22
    ],
)
def test_the_rank_pattern_filter_holds_across_peft_wordings(wording):
    """The filter pins the start of peft's message and an all-'.lora_E' key list, not the words
    between them, so the next peft release's rewording does not bring the warning back; a LoRA
    key that matched nothing is still shown whatever the wording."""
    import re

    from emoset_peft.utils.warnings import WARNINGS

    [pattern] = [message for category, message in WARNINGS if "rank_pattern" in message]
    adalora = f"The following rank_pattern keys {wording}: ['vit.layers.0.attention.q_proj.lora_E', 'vit.layers.1.attention.v_proj.lora_E']."
    stray = f"The following rank_pattern keys {wording}: ['no_such_proj']."
    assert re.match(pattern, adalora)
    assert not re.match(pattern, stray)
