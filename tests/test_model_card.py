"""Model cards (deploy/card.py) and the Hub upload (deploy/hub.py, ``emoset-peft push``).

The cards are real files parsed with huggingface_hub's own readers (``metadata_load``,
``ModelCard.load``); the upload is followed up to ``HfApi.create_repo``/``upload_folder``, which
record their call (there is no network here), and the folder they were handed is checked.
"""

import json
import shutil

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, metadata_load

import emoset_peft as ep
from emoset_peft.cli import main
from emoset_peft.deploy.card import card_text
from emoset_peft.models.methods import get_method


@pytest.fixture(scope="module")
def trained_run(training_root, tiny_vit_dir, tmp_path_factory):
    """One real `emoset-peft train` run (lora on the tiny ViT, k=4, 12 steps)."""
    out = tmp_path_factory.mktemp("card_run") / "run"
    overrides = {
        "data.root": training_root,
        "data.per_class": 4,
        "data.data_seed": 3,
        "data.selection": "k_tied",
        "model.backbone": tiny_vit_dir,
        "model.method": "lora",
        "model.options": "{r: 4}",
        "train.seed": 7,
        "train.batch_size": 8,
        "train.min_steps": 12,
        "train.max_steps": 12,
        "train.eval_every": 6,
        "output_dir": out,
    }
    assert main(["train", *[f"{k}={v}" for k, v in overrides.items()]]) == 0
    return out


def test_a_finished_run_has_a_card_with_its_results(trained_run, tiny_vit_dir):
    card_file = trained_run / "adapter" / "README.md"
    metrics = json.loads((trained_run / "metrics.json").read_text())
    meta = metadata_load(card_file)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "other" and "lora" in meta["tags"]
    assert "base_model" not in meta  # a local folder is not a Hub id
    assert meta["emoset_peft_card"] is True  # the next save_pretrained may rewrite it
    results = {r.metric_type: r for r in ModelCard.load(card_file).data.eval_results}
    assert set(results) == {"accuracy", "macro_f1", "valence_accuracy"}
    for key, result in results.items():
        assert result.metric_value == pytest.approx(metrics["test"][key])
        assert result.dataset_split == "test" and result.task_type == "image-classification"
    text = card_file.read_text()
    assert "[More Information Needed]" not in text
    assert "a local folder, not a Hub id" in text and "vit family" in text
    assert "4 per class (32 images)" in text
    assert "data seed 3" in text and "train seed 7" in text
    assert "`k_tied`: 4 validation images per class (32 images)" in text
    assert f"{metrics['trainable_params']:,} of {metrics['total_params']:,}" in text
    assert "`r=4`" in text
    assert "model = ep.load_adapter(" in text and "## Loading without emoset_peft" in text


def test_every_method_saves_a_card_that_parses(tiny_clip_dir, tmp_path):
    """prefix, vpt, zeroshot and the rest: README.md built with ModelCard, no peft template."""
    for method in ep.METHODS:
        torch.manual_seed(0)
        folder = tmp_path / method
        ep.build_model(tiny_clip_dir, method, total_steps=10).save_pretrained(folder)
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == (
            "transformers"
            if method == "full"
            else ("peft" if get_method(method).plain_peft else "emoset-peft")
        )
        assert card.data.eval_results is None  # nothing measured yet
        assert "[More Information Needed]" not in card.text
        assert f"`{method}`: {get_method(method).summary}" in card.text
        assert ("## Loading without emoset_peft" in card.text) == get_method(method).plain_peft
        if get_method(method).trains:
            assert "Trainable parameters" in card.text


def test_a_hub_backbone_is_the_card_base_model(tiny_vit_dir, tmp_path):
    ep.build_model(tiny_vit_dir, "ia3").save_pretrained(tmp_path)
    record = json.loads((tmp_path / "emoset_peft.json").read_text())
    record["backbone"] = "google/vit-base-patch16-224-in21k"
    (tmp_path / "README.md").write_text(card_text(record, repo_id="alice/vit-ia3"))
    assert metadata_load(tmp_path / "README.md")["base_model"] == record["backbone"]
    text = (tmp_path / "README.md").read_text()
    assert "ep.load_adapter('alice/vit-ia3')" in text and "local folder" not in text
    # A snapshot in the Hugging Face cache is its repo too.
    record["backbone"] = (
        "/home/u/.cache/huggingface/hub/models--facebook--dinov2-small/snapshots/ab12"
    )
    text = card_text(record)
    assert "base_model: facebook/dinov2-small" in text
    assert 'backbone="facebook/dinov2-small"' in text and "local folder" not in text


def test_the_plain_peft_snippet_names_the_emotions(trained_run):
    import re

    card = (trained_run / "adapter" / "README.md").read_text()
    code = re.search(r"## Loading without emoset_peft\n\n```python\n(.*?)```", card, re.S).group(1)
    scope = {"ADAPTER_DIR": str(trained_run / "adapter"), "pixel_values": torch.randn(3, 3, 32, 32)}
    with torch.no_grad():
        exec(code, scope)
    assert scope["model"].config.id2label == dict(enumerate(ep.EMOTIONS))
    assert len(scope["labels"]) == 3 and set(scope["labels"]) <= set(ep.EMOTIONS)


class HubCalls:
    """Stands in for the network: records create_repo / upload_folder and keeps a copy of the
    folder handed to upload_folder (a temporary folder, gone after the call)."""

    def __init__(self, monkeypatch, tmp_path, fail=False):
        self.calls, self.uploaded, self.fail = [], tmp_path / "uploaded", fail

        def create_repo(api, repo_id, **kwargs):
            self.calls.append(("create_repo", repo_id, kwargs))
            if self.fail:
                raise OSError("401 Client Error: Unauthorized\nInvalid token")

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            self.calls.append(("upload_folder", repo_id, kwargs))
            shutil.copytree(folder_path, self.uploaded)
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_uploads_the_adapter_with_its_card(trained_run, monkeypatch, tmp_path, capsys):
    hub = HubCalls(monkeypatch, tmp_path)
    before = (trained_run / "adapter" / "README.md").read_text()
    assert main(["push", str(trained_run), "alice/vit-lora-emoset", "--private"]) == 0
    assert [c[:2] for c in hub.calls] == [
        ("create_repo", "alice/vit-lora-emoset"),
        ("upload_folder", "alice/vit-lora-emoset"),
    ]
    assert hub.calls[0][2]["private"] is True
    assert "alice/vit-lora-emoset" in capsys.readouterr().out
    files = {p.name for p in hub.uploaded.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "emoset_peft.json"} <= files
    assert "README.md" in files
    card = ModelCard.load(hub.uploaded / "README.md")
    assert card.data.model_name == "alice/vit-lora-emoset" and len(card.data.eval_results) == 3
    assert "ep.load_adapter('alice/vit-lora-emoset'" in card.text
    # The run's own folder is left as it was; what was uploaded loads back.
    assert (trained_run / "adapter" / "README.md").read_text() == before
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            ep.load_adapter(hub.uploaded)(pixel_values=x).logits,
            ep.load_adapter(trained_run / "adapter")(pixel_values=x).logits,
        )


def test_model_push_to_hub_and_from_pretrained_of_a_repo(trained_run, monkeypatch, tmp_path):
    hub = HubCalls(monkeypatch, tmp_path)
    model = ep.EmoSetModel.from_pretrained(trained_run)  # a run folder: its adapter/
    assert model.source_dir == trained_run / "adapter"
    url = model.push_to_hub("alice/again", commit_message="v1")
    assert url.startswith("https://huggingface.co/alice/again")
    assert hub.calls[1][2]["commit_message"] == "v1"
    card = ModelCard.load(hub.uploaded / "README.md")  # the run's results, found beside the folder
    assert {r.metric_type for r in card.data.eval_results} == {
        "accuracy",
        "macro_f1",
        "valence_accuracy",
    }
    downloads = []

    def snapshot_download(repo_id, **kwargs):
        downloads.append(repo_id)
        return str(hub.uploaded)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    again = ep.EmoSetModel.from_pretrained("alice/again")
    assert downloads == ["alice/again"] and again.config.id2label == dict(enumerate(ep.EMOTIONS))
    assert ep.load_adapter("alice/again").record == again.record  # the same resolution


def test_push_failures_are_one_line(trained_run, monkeypatch, tmp_path, capsys):
    HubCalls(monkeypatch, tmp_path, fail=True)
    assert main(["push", str(trained_run), "alice/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Unauthorized" in err and "--token" in err
    assert main(["push", str(trained_run), "not a repo"]) == 2
    assert "owner/name" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "alice/x"]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_a_repo_that_cannot_be_fetched_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "alice/missing" is no folder here
    with pytest.raises(ep.EmoSetError, match="no folder alice/missing, and downloading it") as err:
        ep.load_adapter("alice/missing")
    assert "\n" not in str(err.value)
    with pytest.raises(ep.EmoSetError, match="no such folder"):
        ep.load_adapter(tmp_path / "runs" / "nothing" / "here")
