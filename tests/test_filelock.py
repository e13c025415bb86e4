"""update_locked: concurrent read-modify-write of one file by several processes loses no update.

This is the pure-Python half of saving a shared TensorRT timing cache (lock, read what is on disk, merge,
write atomically); the merge here is a plain function on bytes, not a stand-in for TensorRT.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from panoptic_deploy.filelock import lock_path, locked, update_locked

WORKERS = 4
UPDATES = 5


def _append_token(path: str, worker: int) -> None:
    for i in range(UPDATES):

        def add(current: bytes | None, token: bytes = f"{worker}.{i}\n".encode()) -> bytes:
            time.sleep(0.01)  # widen the read-to-write window a lost update needs
            return (current or b"") + token

        update_locked(path, add)


def _append_token_unlocked(path: str, worker: int, barrier: Any) -> None:
    # Every worker reads before any writes (the barrier), so without a lock all but one update is lost
    # whatever the machine's load: the control cannot pass by luck.
    target = Path(path)
    current = target.read_bytes() if target.is_file() else b""
    barrier.wait()
    target.write_bytes(current + f"{worker}.0\n".encode())


def _run_workers(target: object, path: Path, *extra: object) -> list[str]:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=(str(path), w, *extra)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return path.read_text().splitlines()


def test_concurrent_updates_are_all_kept(tmp_path: Path) -> None:
    lines = _run_workers(_append_token, tmp_path / "timing.cache")
    assert sorted(lines) == sorted(f"{w}.{i}" for w in range(WORKERS) for i in range(UPDATES))
    # the control: the same workers without the lock lose updates (the race the lock exists for)
    ctx = multiprocessing.get_context("fork")
    unlocked = _run_workers(_append_token_unlocked, tmp_path / "unlocked.cache", ctx.Barrier(WORKERS))
    assert len(unlocked) == 1


def test_the_lock_is_exclusive_and_on_a_separate_file(tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "timing.cache"
    assert lock_path(cache) == tmp_path / "sub" / "timing.cache.lock"
    # while held, a second open file description (as another process has) cannot take it
    with locked(cache), lock_path(cache).open("ab") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with lock_path(cache).open("ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the block
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    assert not cache.exists()  # locking never creates the file itself


def test_update_sees_none_for_a_missing_file_and_a_failed_update_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    seen: list[bytes | None] = []

    def record(current: bytes | None) -> bytes:
        seen.append(current)
        return b"new"

    update_locked(path, record)
    update_locked(path, record)
    assert seen == [None, b"new"] and path.read_bytes() == b"new"

    def fail(current: bytes | None) -> bytes:
        raise ValueError("merge failed")

    with pytest.raises(ValueError, match="merge failed"):
        update_locked(path, fail)
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.bin.lock"]  # no temporary left
