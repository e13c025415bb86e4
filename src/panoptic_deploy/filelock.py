"""Read-modify-write of a shared file by concurrent processes: an exclusive lock, then an atomic write.

Two TensorRT builds that share a timing cache both read it, build for minutes, and save it: without a lock
the second save drops what the first added. Polygraphy and trtexec lock the cache file while they merge the
on-disk cache into theirs and save (Polygraphy ``util.LockFile``); :func:`update_locked` is that step.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from panoptic_deploy.fileio import write_bytes_atomic


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of ``path``: ``<name>.lock`` next to it."""
    target = Path(path)
    return target.with_name(target.name + ".lock")


@contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` for the block (blocking until it is free).

    The lock is on a separate file because ``path`` itself is replaced by a rename on every atomic write: a
    lock on it would stay with the old inode. The lock file is left in place (deleting it would let a
    waiting process lock an unlinked file while a third creates a new one).
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("ab") as handle:  # "a": never truncates a file another process holds
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def update_locked(path: str | os.PathLike[str], update: Callable[[bytes | None], bytes]) -> None:
    """Under :func:`locked`: read ``path`` (None if absent), write ``update(content)`` back atomically."""
    target = Path(path)
    with locked(target):
        current = target.read_bytes() if target.is_file() else None
        write_bytes_atomic(target, update(current))
