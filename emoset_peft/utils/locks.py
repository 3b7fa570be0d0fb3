"""Exclusive locks on files and folders (``fcntl.flock``): the kernel releases them when the holder
exits or dies, so a lock left by a killed process never blocks the next one.

``folder_lock`` guards a run or study folder for a whole run: a second process fails at once with
one line naming the holder's pid and host (written into the lock file). ``file_lock`` waits: the
study's results table uses it around each read-append-rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path

from emoset_peft.errors import EmoSetError

LOCK_NAME = ".emoset-peft.lock"  # inside the locked folder; never deleted while in use


class FolderBusy(EmoSetError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def file_lock(path: str | Path, *, wait: bool = True, record_holder: bool = False):
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    wait=False raises BlockingIOError at once when another process holds it. record_holder=True
    writes this process's pid and host into the file for whoever finds it locked.
    """
    # No O_TRUNC: the holder's record must survive a second process opening the file.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        if record_holder:
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0
            )
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run"):
    """Hold ``folder``'s lock for a whole run; FolderBusy names the live holder."""
    path = Path(folder) / LOCK_NAME
    try:
        with file_lock(path, wait=False, record_holder=True):
            yield
    except BlockingIOError:
        raise FolderBusy(_busy_message(Path(folder), what)) from None


def check_not_busy(folder: str | Path, what: str = "run") -> None:
    """Raise FolderBusy when a live process holds ``folder``'s lock; creates nothing."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (or unreadable): nobody holds it that we could name
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderBusy(_busy_message(Path(folder), what)) from None
    finally:
        os.close(fd)


def _busy_message(folder: Path, what: str) -> str:
    try:
        holder = json.loads((folder / LOCK_NAME).read_text())
        who = f"pid {int(holder['pid'])} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        who = "a process that has not written its pid yet"
    return (
        f"{folder} is in use by another emoset-peft {what} ({who}); wait for it to finish, "
        "stop it, or pick another output_dir"
    )
