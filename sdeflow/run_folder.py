"""Transactional run folders: a set of files is replaced all at once or not at all, and one writer at a time.

A checkpoint folder holds several files that must agree (``model.safetensors`` and the ``config.json`` that records
its SHA-256; for a training run also ``train_state.safetensors`` + ``train_state.json`` at the same step). Replacing
them one by one leaves a mixed set after a kill. ``commit(folder, files)`` is a redo log instead:

1. every new file is written (and fsync'ed) into the staging folder ``folder/.pending/``;
2. ``.pending/COMMIT.json``, naming the files, is written atomically: this rename is the commit point;
3. each staged file is renamed over its final name (``os.replace``, atomic), then the staging folder is removed.

A kill before step 2 leaves the old set untouched (the stale staging folder is discarded by the next writer); a kill
during step 3 leaves a committed staging folder, which the next writer finishes (``recover``) and which readers see
through ``resolve`` without writing anything. So at every instant the folder names exactly one consistent set.

``locked(folder)`` holds an exclusive ``flock`` on ``folder/.lock`` for the duration of a write or a whole training
run; a second writer gets ``FolderLockedError`` naming the holder's pid. The kernel drops the lock the moment its
process dies (even by SIGKILL), so a killed run never leaves a stale lock behind. Locks are re-entrant within one
process (``train`` holds the lock and calls ``sdeflow.save`` inside it). POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["FolderLockedError", "locked", "commit", "recover", "resolve", "has_committed", "LOCK_FILE", "STAGING"]

LOCK_FILE = ".lock"
STAGING = ".pending"
COMMIT_FILE = "COMMIT.json"

_HELD: dict[str, list] = {}  # resolved folder -> [file descriptor, depth]: locks this process holds


class FolderLockedError(RuntimeError):
    """Another process is writing to the folder (it holds ``folder/.lock``)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems do not sync directories
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def locked(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive write lock of ``folder`` (created if missing) for the ``with`` block.

    Raises ``FolderLockedError`` at once if another process holds it; re-entrant within this process.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderLockedError(
            f"{folder} is being written by another sdeflow process (pid {holder}); wait for it to finish, stop it, "
            "or write to another folder."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield folder
    finally:
        del _HELD[key]
        os.close(fd)  # releases the flock


def holds_lock(folder: str | os.PathLike) -> bool:
    """Whether this process holds the write lock of ``folder``."""
    return str(Path(folder).resolve()) in _HELD


def _committed_names(folder: Path) -> list[str] | None:
    """The file names of a committed but unfinished transaction, or None."""
    try:
        return list(json.loads((folder / STAGING / COMMIT_FILE).read_text())["files"])
    except FileNotFoundError:
        return None


def recover(folder: str | os.PathLike) -> None:
    """Finish a committed transaction or discard an uncommitted one (call with the lock held)."""
    folder = Path(folder)
    stage = folder / STAGING
    if not stage.exists():
        return
    names = _committed_names(folder)
    if names is not None:
        for name in names:
            src = stage / name
            if src.exists():
                os.replace(src, folder / name)
        _fsync_dir(folder)
    shutil.rmtree(stage)


def commit(folder: str | os.PathLike, files: Mapping[str, bytes]) -> None:
    """Replace the files ``{name: content}`` in ``folder`` as one transaction (see the module docstring).

    Takes the folder's lock unless this process already holds it. If writing fails, the folder keeps its previous
    files; a folder that did not exist before is removed again.
    """
    folder = Path(folder)
    if not files or any(Path(n).name != n or n.startswith(".") for n in files):
        raise ValueError(f"`files` must map plain file names to bytes; got {sorted(files)}.")
    existed = folder.exists()
    try:
        with locked(folder):
            recover(folder)
            stage = folder / STAGING
            stage.mkdir()
            for name, data in files.items():
                _write_synced(stage / name, data)
            tmp = stage / f".{COMMIT_FILE}.tmp"
            _write_synced(tmp, json.dumps({"files": sorted(files)}).encode())
            os.replace(tmp, stage / COMMIT_FILE)  # the commit point
            _fsync_dir(stage)
            recover(folder)
    except BaseException:
        if _committed_names(folder) is None:
            shutil.rmtree(folder / STAGING, ignore_errors=True)
        if not existed and not holds_lock(folder):
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
                folder.rmdir()
        raise


def resolve(folder: str | os.PathLike, name: str) -> Path:
    """Where the committed version of ``folder/name`` is now: inside a committed, unfinished transaction or in the
    folder itself. Read-only: readers never need the lock."""
    folder = Path(folder)
    names = _committed_names(folder)
    if names is not None and name in names and (folder / STAGING / name).exists():
        return folder / STAGING / name
    return folder / name


def has_committed(folder: str | os.PathLike, name: str) -> bool:
    """Whether ``folder`` holds a committed ``name``."""
    return resolve(folder, name).is_file()
