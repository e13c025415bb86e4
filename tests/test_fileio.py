"""Atomic writes: complete or absent, with ordinary permissions, synced to disk; temp files of killed writers
recognised and swept (a real SIGKILL of a CLI writer mid-write); sets of files with a completion marker."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from panoptic_deploy.fileio import (
    FOREIGN_TEMP_MAX_AGE_S,
    TEMP_MARK,
    atomic_files,
    atomic_path,
    file_sha256,
    host_tag,
    is_stale_temp,
    is_temp_name,
    sweep_stale_temps,
    temp_dir_near,
    write_text_atomic,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "artifact.onnx"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list((tmp_path / "sub").iterdir()) == []


def test_success_replaces_and_keeps_suffix(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == tmp_path
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "report.md", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o640


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------------------
# Temp names, fsync, stale-temp sweep, atomic sets


def _dead_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp(folder: Path, final: str, pid: int, host: str | None = None, suffix: str = ".onnx") -> Path:
    path = folder / f".{final}.{TEMP_MARK}-{host or host_tag()}-{pid}-abcd1234{suffix}"
    path.write_bytes(b"half")
    return path


def test_temp_names_carry_the_mark_the_pid_and_the_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "model.sim.onnx") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".onnx"
        assert tmp.name.startswith(f".model.sim.onnx.{TEMP_MARK}-{host_tag()}-{os.getpid()}-")
        assert is_temp_name(tmp.name)
        assert not is_stale_temp(tmp)  # this process is alive
        tmp.write_bytes(b"x")
    with temp_dir_near(tmp_path / "calib.cache") as folder:
        assert folder.is_dir() and is_temp_name(folder.name) and folder.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == ["model.sim.onnx"]
    for name in (".gitkeep", "model.onnx", ".model.onnx.tmp1234", ".a.pdtmp-zz-1-abcd1234", "a.pdtmp-0"):
        assert not is_temp_name(name), name


def test_file_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "artifact.onnx"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"model")
    assert events == [("fsync", str(tmp)), ("replace", str(target)), ("fsync", str(tmp_path))]


def test_sweep_removes_only_temps_of_writers_that_are_gone(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = _temp(tmp_path, "model.onnx", dead)
    nested = tmp_path / "sub"
    nested.mkdir()
    stale_nested = _temp(nested, "report.md", dead, suffix=".md")
    stale_dir = tmp_path / f".calib.cache.{TEMP_MARK}-{host_tag()}-{dead}-abcd1234"
    (stale_dir / "inner").mkdir(parents=True)
    (stale_dir / "inner" / "augmented.onnx").write_bytes(b"x" * 100)
    live = _temp(tmp_path, "weights.pth", os.getpid(), suffix=".pth")
    foreign_new = _temp(tmp_path, "a.onnx", dead, host="0badc0de")
    foreign_old = _temp(tmp_path, "b.onnx", dead, host="0badc0de")
    old = time.time() - FOREIGN_TEMP_MAX_AGE_S - 60
    os.utime(foreign_old, (old, old))
    others = [tmp_path / ".gitkeep", tmp_path / "model.onnx", tmp_path / ".model.onnx.x1y2z3.tmp.onnx"]
    for path in others:
        path.write_bytes(b"keep")

    assert set(sweep_stale_temps(tmp_path, recursive=False)) == {stale, stale_dir, foreign_old}
    assert sweep_stale_temps(tmp_path) == [stale_nested]
    for path in (stale, stale_dir, foreign_old, stale_nested):
        assert not path.exists()
    for path in [live, foreign_new, *others]:
        assert path.exists(), path
    assert sweep_stale_temps(tmp_path / "missing") == []


def test_a_zombie_writer_counts_as_gone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "child did not exit"
            time.sleep(0.01)
        temp = _temp(tmp_path, "model.onnx", proc.pid)
        assert is_stale_temp(temp)  # os.kill(pid, 0) still succeeds on a zombie
        assert sweep_stale_temps(tmp_path) == [temp]
    finally:
        proc.wait()


def test_atomic_set_appears_with_its_marker_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png, js = tmp_path / "a.png", tmp_path / "a.json"
    with atomic_files() as files:
        files.path(png).write_bytes(b"png 1")
        files.path(js).write_text("json 1")
    assert (png.read_bytes(), js.read_text()) == (b"png 1", "json 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]

    # An error inside the block changes nothing.
    with pytest.raises(RuntimeError), atomic_files() as files:
        files.path(png).write_bytes(b"png 2")
        raise RuntimeError("interrupted")
    assert (png.read_bytes(), js.read_text()) == (b"png 1", "json 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]

    # Dying between the renames (here: the marker's rename fails) leaves the set without its marker, never
    # the old marker beside a new file.
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(dst) == js:
            raise OSError("killed")
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="killed"), atomic_files() as files:
        files.path(png).write_bytes(b"png 3")
        files.path(js).write_text("json 3")
    assert png.read_bytes() == b"png 3" and not js.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    with pytest.raises(ValueError, match="twice"), atomic_files() as files:
        files.path(png)
        files.path(png)


# ------------------------------------------------------------------------------------------------------------
# A real SIGKILL of a CLI writer mid-write, a sweep beside a live writer, and the next run


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "panoptic_deploy.cli", *args]


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if is_temp_name(p.name)]


def test_killed_writer_leaves_a_temp_that_the_next_run_removes(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    out.mkdir()
    target = out / "w.pth"
    args = ("make-weights", "--config", str(CONFIG), "--seed", "1", "--output", str(target))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # 148 MB of synthetic weights: wait until torch.save is writing into the temp file.
        deadline = time.monotonic() + 120
        temp = None
        while writer.poll() is None and time.monotonic() < deadline:
            temps = _temps(out)
            if temps and temp is None:
                temp = temps[0]
                # The writer is alive: a sweep beside it (another job starting) keeps its temp.
                assert sweep_stale_temps(out) == [] and temp.exists()
            if temp is not None and temp.exists() and temp.stat().st_size > 0:
                writer.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if writer.poll() is None:
            writer.kill()
        output = writer.communicate()[0].decode(errors="replace")
    assert writer.returncode == -signal.SIGKILL, f"the writer was not killed mid-write:\n{output}"
    assert temp is not None
    # What a killed job leaves: a partial temp file, and no output.
    assert _temps(out) == [temp] and temp.stat().st_size > 0 and not target.exists()
    print(f"killed writer left {temp.name} of {temp.stat().st_size} bytes")

    rerun = subprocess.run(_cli(*args), env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"removed 1 temporary file(s) left in {out} by killed runs" in rerun.stderr
    assert [p.name for p in out.iterdir()] == ["w.pth"]
    checkpoint = torch.load(target, map_location="cpu", weights_only=True)
    assert checkpoint["model"] and all(torch.isfinite(v).all() for v in checkpoint["model"].values())


def test_host_tag_differs_in_another_pid_namespace() -> None:
    """A writer in another PID namespace (a container with the same host name) must not look like ours: the
    sweep would take its live pid for a dead one of this namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    code = "from panoptic_deploy.fileio import host_tag; print(host_tag())"
    run = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if run.returncode != 0:
        pytest.skip(f"no new PID namespace here: {run.stderr.strip()[:200]}")
    assert run.stdout.strip() != host_tag()
    assert len(run.stdout.strip()) == 8
