"""Disk trouble the user can fix: a full disk, an unwritable cache folder, temp files of dead runs.

Temp files are named ``.<stem>.<host>.<pid>.tmp<suffix>`` so that a later process can tell a
file of a live writer from the leftover of a killed one (same host, pid gone) and remove only
the latter.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import tempfile
from pathlib import Path

from emoset_peft.errors import EmoSetError

log = logging.getLogger(__name__)

# ENOSPC: no space left; EFBIG: file size limit (ulimit -f, or a filesystem's own); EDQUOT: quota.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# safetensors reports I/O failures as SafetensorError("... (os error 28)"), not OSError.
_OS_ERROR_CODE = re.compile(r"os error (\d+)")
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp(?P<suffix>.*)$")
_warned_fallbacks: set[str] = set()


def is_disk_full(err: BaseException) -> bool:
    """True for an OSError or SafetensorError that means the disk (or a size limit) is full."""
    if isinstance(err, OSError):
        return err.errno in DISK_FULL_ERRNOS
    if type(err).__name__ == "SafetensorError":
        match = _OS_ERROR_CODE.search(str(err))
        return bool(match) and int(match.group(1)) in DISK_FULL_ERRNOS
    return False


@contextlib.contextmanager
def disk_full_is_user_error(folder: str | Path, what: str, hint: str):
    """Turn a full disk while writing ``what`` into ``folder`` into one EmoSetError line."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        reason = os.strerror(err.errno) if isinstance(err, OSError) else str(err)
        raise EmoSetError(
            f"the disk is full while writing {what} in {folder} ({reason}); {hint}"
        ) from None


@contextlib.contextmanager
def atomic_folder(target: Path, what: str, hint: str):
    """Write a folder as a whole: yields a temp folder beside ``target``, renamed over it on
    success, removed on any failure (a full disk becomes one EmoSetError line)."""
    import shutil

    # a killed writer's whole copy (a resumed run's adapter) would otherwise stay beside target
    remove_stale_temps(target.parent, stem=target.name)
    tmp = temp_path(target)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_full_is_user_error(target.parent, what, hint):
            tmp.mkdir(parents=True)
            yield tmp
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temp_path(target: Path, suffix: str = "") -> Path:
    """A temp file beside ``target`` that names this host and process."""
    return target.with_name(f".{target.name}.{_host()}.{os.getpid()}.tmp{suffix}")


def remove_stale_temps(folder: Path, dry_run: bool = False, stem: str | None = None) -> list[Path]:
    """Delete (or with ``dry_run`` only list) temp files and folders in ``folder`` whose writer
    (this host, that pid) no longer runs; with ``stem``, only the temps of ``folder/stem``."""
    import shutil

    stale = []
    try:
        candidates = sorted(folder.iterdir())
    except OSError:
        return stale
    for path in candidates:
        match = _TEMP_NAME.match(path.name)
        if not match or match["host"] != _host() or _alive(int(match["pid"])):
            continue
        if stem is not None and match["stem"] != stem:
            continue
        if dry_run:
            stale.append(path)
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            stale.append(path)
            log.info(
                "removed %s, left by a process (pid %s) that no longer runs", path, match["pid"]
            )
    return stale


def is_temp_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


def fallback_cache_dir() -> Path:
    """Where caches go when the configured folder cannot be written: one folder per user."""
    return Path(tempfile.gettempdir()) / f"emoset_peft-cache-{os.getuid()}"


def writable_cache_dir(root: Path, what: str, sub: str = "") -> Path:
    """``root/sub`` if this process can write there, else the same under
    :func:`fallback_cache_dir` (with one warning per folder and process).

    Root writes through chmod 0555, so writability is probed by creating a file, not os.access.
    """
    folder = root / sub if sub else root
    problem = _write_problem(folder)
    if problem is None:
        return folder
    fallback = fallback_cache_dir() / sub if sub else fallback_cache_dir()
    if _write_problem(fallback) is not None or fallback_cache_dir().stat().st_uid != os.getuid():
        raise EmoSetError(
            f"cannot write the {what} in {folder} ({problem}) nor in {fallback}; "
            "set data.cache_dir or EMOSET_PEFT_CACHE to a writable folder"
        )
    if str(folder) not in _warned_fallbacks:
        _warned_fallbacks.add(str(folder))
        log.warning(
            "could not write the %s to %s (%s); using %s instead. Set data.cache_dir or "
            "EMOSET_PEFT_CACHE to a writable folder to keep it between runs.",
            what,
            folder,
            problem,
            fallback,
        )
    return fallback


def _write_problem(folder: Path) -> str | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
