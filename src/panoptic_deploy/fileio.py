"""Atomic file writing: an artifact is either complete or absent, never half-written.

Every artifact of the package is written to a temporary file next to it, flushed to disk (``fsync``) and
renamed onto its final name; the directory is then synced so that the rename itself survives a power cut.
A process killed mid-write (SIGKILL, out of memory) cannot run its cleanup, so its temporary file stays.
Those files carry a fixed mark so that the package recognises its own:

    .<final name>.pdtmp-<host>-<pid>-<8 random chars><final suffix>      (a file; <host>: 8 hex digits)
    .<final name>.pdtmp-<host>-<pid>-<8 random chars>                    (a scratch folder)

and :func:`sweep_stale_temps` removes the ones whose writer is gone: written on this host by a process that
no longer runs (or is a zombie). A temp of a live writer is never touched, so a sweep may run while other
jobs write into the same folder. A temp written on another host (a shared file system) cannot be checked that
way; it is removed once it has not changed for :data:`FOREIGN_TEMP_MAX_AGE_S`. The workflow sweeps
``results/`` when it starts (``onstart`` in the Snakefile) and every CLI command sweeps its output folder
before it writes.

A set of files that belong together (a prediction's PNG and its JSON, a report and its plots) is written with
:func:`atomic_files`: all are written to temporaries first, then the last file of the set, its *completion
marker*, is removed, the others are renamed, and the marker is renamed last. A reader that finds the marker
therefore finds the whole new set; without the marker the set is incomplete, whatever else is there.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PathLike = str | os.PathLike[str]

TEMP_MARK = "pdtmp"
# A temp not changed for this long, written on another host, is taken as abandoned (1 day).
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600.0
_TEMP_NAME = re.compile(
    rf"^\..+\.{TEMP_MARK}-(?P<host>[0-9a-f]{{8}})-(?P<pid>[0-9]+)-[a-z0-9_]{{8}}(?:\.[^.]*)?$"
)


def host_tag() -> str:
    """8 hex digits naming this host in temp names: a hash of the host name and the PID namespace.

    The namespace counts because the sweep judges a temp by whether its writer's pid is alive: two containers
    with one host name but separate process lists would otherwise see each other's live writers as dead.
    """
    try:
        namespace = str(Path("/proc/self/ns/pid").stat().st_ino)
    except OSError:  # no procfs (not Linux): the host name alone
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}:{namespace}".encode()).hexdigest()[:8]


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{TEMP_MARK}-{host_tag()}-{os.getpid()}-"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file or folder name of this package."""
    return _TEMP_NAME.match(name) is not None


def _new_temp_file(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=final.suffix, dir=final.parent)
    os.close(fd)
    return Path(name)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: PathLike) -> None:
    """Sync a directory so that renames and removals in it are on disk (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (and Windows) cannot sync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _finish(tmp: Path) -> None:
    """Give ``tmp`` the permissions a plain open() would (mkstemp creates 0600) and flush it to disk."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    _fsync_file(tmp)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file keeps ``path``'s suffix so that writers which dispatch on the extension
    (``torch.save``, ``PIL.Image.save``, ``onnx.save``) behave as for the final name. Before the rename the
    file is synced to disk, after it the directory.
    """
    final = Path(path)
    tmp = _new_temp_file(final)
    try:
        yield tmp
        _finish(tmp)
        tmp.replace(final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicFiles:
    """Temporary paths of one set of files; see :func:`atomic_files`."""

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []

    def path(self, final: PathLike) -> Path:
        """A temporary path for ``final``; the last one asked for is the set's completion marker."""
        target = Path(final)
        if any(target == f for f, _ in self._pairs):
            raise ValueError(f"{target}: asked for twice in one atomic set")
        tmp = _new_temp_file(target)
        self._pairs.append((target, tmp))
        return tmp

    @property
    def temps(self) -> list[Path]:
        return [tmp for _, tmp in self._pairs]

    def _commit(self) -> None:
        if not self._pairs:
            return
        for _, tmp in self._pairs:
            _finish(tmp)
        marker, marker_tmp = self._pairs[-1]
        # Remove the old marker first: from here until the last rename the set reads as incomplete.
        if marker.exists():
            marker.unlink()
            fsync_dir(marker.parent)
        for final, tmp in self._pairs[:-1]:
            tmp.replace(final)
        for folder in {final.parent for final, _ in self._pairs[:-1]}:
            fsync_dir(folder)
        marker_tmp.replace(marker)
        fsync_dir(marker.parent)


@contextmanager
def atomic_files() -> Iterator[AtomicFiles]:
    """Write several files as one set: ``files.path(final)`` gives a temporary path per file; when the block
    succeeds they are renamed onto their final names with the **last** one (the completion marker) renamed
    last, after its old version was removed. On failure, or if the process dies, no file of the set is
    changed except that the marker may be missing: a set is complete exactly when its marker exists.
    """
    files = AtomicFiles()
    try:
        yield files
        files._commit()
    finally:
        for tmp in files.temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def temp_dir_near(path: PathLike) -> Iterator[Path]:
    """A scratch folder next to ``path`` (same file system, the package's temp mark), removed afterwards.

    For large intermediate files (a copy of a model, an augmented calibration model): a killed job leaves them
    where :func:`sweep_stale_temps` finds them, not in the system temp folder.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to another user
        pass
    if not Path("/proc/self/stat").is_file():  # no procfs (macOS): os.kill is all there is
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:  # it ended since os.kill
        return False
    # Field 3 is the state; the command name before it is in parentheses and may contain spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return not fields or fields[0] not in ("Z", "X")


def is_stale_temp(path: PathLike, now: float | None = None) -> bool:
    """Whether ``path`` is a temp of this package whose writer is gone (see the module docstring)."""
    p = Path(path)
    match = _TEMP_NAME.match(p.name)
    if match is None:
        return False
    if match["host"] == host_tag():
        return not _pid_alive(int(match["pid"]))
    try:
        age = (time.time() if now is None else now) - p.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_TEMP_MAX_AGE_S


def sweep_stale_temps(folder: PathLike, recursive: bool = True) -> list[Path]:
    """Remove the package's stale temporary files and folders under ``folder`` (its subfolders too when
    ``recursive``); returns what was removed. A missing folder is not an error."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for current, dirs, files in os.walk(root):
        here = Path(current)
        for name in [*files, *dirs]:
            path = here / name
            if not is_temp_name(name) or not is_stale_temp(path, now):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:  # another sweep got there first, or no permission: leave it
                continue
            removed.append(path)
        # Never descend into a temp folder (removed or live) nor, unless recursive, into anything.
        dirs[:] = [d for d in dirs if recursive and not is_temp_name(d)]
    return removed


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
