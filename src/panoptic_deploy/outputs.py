"""Output paths checked before anything is written: never an input, a folder where a folder is expected and a
file where a file is. Every problem is one :class:`OutputError` line naming the option and the path."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from panoptic_deploy.errors import OutputError
from panoptic_deploy.fileio import PathLike


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file (links followed), None if there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_overwriting_inputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike | None]) -> None:
    """:class:`OutputError` if an output path is one of the inputs (the same file: symbolic and hard links,
    ``..`` and case-insensitive file systems included). An output that does not exist yet cannot be one."""
    by_identity: dict[tuple[int, int], Path] = {}
    for item in inputs:
        if item is None:
            continue
        identity = _identity(Path(item))
        if identity is not None:
            by_identity.setdefault(identity, Path(item))
    if not by_identity:
        return
    for output in outputs:
        identity = _identity(Path(output))
        if identity is not None and identity in by_identity:
            source = by_identity[identity]
            same = "" if str(source) == str(output) else f" (the same file as the input {source})"
            raise OutputError(
                f"{output}: this output is also an input{same}; refusing to overwrite it "
                "(choose another output path; nothing was written)"
            )


def output_folder(path: PathLike, option: str) -> Path:
    """``path`` as an output folder: OutputError if it exists and is not a folder."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder}: exists and is not a folder (outputs are written into one)")
    _parents_are_folders(folder, option)
    return folder


def output_file(path: PathLike, option: str) -> Path:
    """``path`` as an output file: OutputError if it is an existing folder or a parent of it is a file."""
    file = Path(path)
    if file.is_dir():
        raise OutputError(f"{option} {file}: is a folder; give the path of a file to write")
    _parents_are_folders(file, option)
    return file


def _parents_are_folders(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {path}: {parent} is a file, not a folder")
            return
