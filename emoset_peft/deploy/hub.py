"""The Hugging Face Hub: ``push`` an adapter folder with its model card, and ``from_pretrained``
of a pushed repo. Everything goes through ``huggingface_hub.HfApi`` (``create_repo`` +
``upload_folder``) and ``snapshot_download``; a failure there (no token, no network, no such
repo) is one EmoSetError line.

The folder uploaded is a staging copy: the run's own ``adapter/`` is never modified, and the
uploaded card carries the repo id in its loading code.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from emoset_peft.errors import EmoSetError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.fullmatch(repo_id or ""):
        raise EmoSetError(
            f"repo id {repo_id!r} is not of the form owner/name (e.g. alice/vit-lora-emoset)"
        )
    return repo_id


def _hub_failure(what: str, err: Exception) -> EmoSetError:
    reason = " ".join(str(err).split())[:300]
    return EmoSetError(
        f"{what} failed ({type(err).__name__}: {reason}); check the network, the repo id and "
        "the token (--token, $HF_TOKEN or `hf auth login`)"
    )


def local_folder(path_or_repo: str | Path, *, revision=None, token=None) -> Path:
    """A local folder as it is (a run folder: its ``adapter/``); a Hub repo id downloaded to the
    Hugging Face cache."""
    from emoset_peft.models.folder import RECORD_NAME

    text = os.fspath(path_or_repo)
    path = Path(text).expanduser()
    if (path / "adapter" / RECORD_NAME).is_file():
        return path / "adapter"
    if path.exists() or not _REPO_ID.fullmatch(text):
        return path  # load_adapter names a missing folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision, token=token))
    except Exception as err:  # noqa: BLE001 (huggingface_hub raises many kinds; all mean "not here")
        raise _hub_failure(f"no folder {text}, and downloading it from the Hub", err) from None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Create ``repo_id`` if missing and upload ``folder`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=commit_message or "Upload EmoSet model trained with emoset-peft",
        )
    except Exception as err:  # noqa: BLE001
        raise _hub_failure(f"pushing {folder} to {repo_id}", err) from None
    return str(getattr(commit, "commit_url", commit))


def push_run(run_or_adapter: str | Path, repo_id: str, **kwargs) -> str:
    """Upload a run's adapter folder (or an adapter folder) with its card, rendered for ``repo_id``."""
    from emoset_peft.deploy.card import CARD_NAME, adapter_folder, run_info, write_card
    from emoset_peft.models.folder import read_record

    check_repo_id(repo_id)
    adapter = adapter_folder(run_or_adapter)
    record = read_record(adapter)
    with tempfile.TemporaryDirectory(prefix="emoset-peft-push-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        for file in sorted(adapter.iterdir()):
            if file.is_file() and file.name != CARD_NAME:
                _link_or_copy(file, staging / file.name)
        write_card(staging, record, run=run_info(adapter), repo_id=repo_id)
        return push_folder(staging, repo_id, **kwargs)


def push_model(model, repo_id: str, **kwargs) -> str:
    """``EmoSetModel.push_to_hub``: save to a staging folder, write the card, upload."""
    from emoset_peft.deploy.card import run_info, write_card
    from emoset_peft.models.folder import read_record
    from emoset_peft.models.wrapper import count_parameters

    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="emoset-peft-push-") as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        run = run_info(model.source_dir) if model.source_dir is not None else None
        trainable = count_parameters(model)
        write_card(
            staging,
            read_record(staging),
            run=run,
            repo_id=repo_id,
            trainable=trainable if trainable[0] else None,
        )
        return push_folder(staging, repo_id, **kwargs)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # no copy of a large full-fine-tuning checkpoint
    except OSError:
        shutil.copy2(source, target)
