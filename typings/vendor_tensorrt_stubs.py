"""Generate typings/: the tensorrt-stubs .pyi files cut down to the API that TensorRT 10.13 and 11.x share.

Usage (from the repository root; nothing here imports or needs TensorRT):

    pip download --no-deps tensorrt-stubs==10.13.0.35.1 -d /tmp/trtstubs     # download only, never install
    git clone https://github.com/NVIDIA/TensorRT /tmp/TensorRT               # all release/* branches
    python typings/vendor_tensorrt_stubs.py /tmp/trtstubs/tensorrt_stubs-10.13.0.35.1-py3-none-any.whl \\
        /tmp/TensorRT/.git

The stub wheel (pybind11-stubgen output of the TensorRT 10.13 wheel, a third-party package) gives the
declarations with their types. Which of them exist in 11.x is decided mechanically, not by hand: the pybind11
binding sources of NVIDIA/TensorRT ``release/10.13`` and of every ``release/11.*`` branch in the repository
are read (``tensorrt_api.py``), and every class, member and enum value that 10.13 binds but some 11.x release
does not is deleted from the stubs. ``tensorrt_removed_in_11.txt`` lists what was deleted, with the commits
read. The wheel is only unpacked (an installed ``tensorrt-stubs`` makes ``import tensorrt`` succeed as an
empty namespace package).

Besides the intersection, three hand-kept edits, each asserted so that another stub release fails loudly:

1. make the files parse: parameters named ``in`` become ``in_``; ``add_scale_nd``'s trailing non-default
   parameter gets a default; ``import tensorrt_libs`` becomes ``tensorrt_libs: object``; ``typing_extensions``
   is imported where the stubs use it;
2. ``| None`` where the bindings return None (a C++ nullptr) and the stub promises an object
   (:data:`OPTIONAL_RETURNS`), and ``OnnxParser.get_error``'s real ``ParserError`` type. Which C++ calls
   return nullptr is C++ semantics the binding sources do not show, so this list is kept by hand from the
   API documentation.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def _sibling(name: str) -> ModuleType:
    """Import typings/<name>.py by path: typings/ must not go on sys.path, where its tensorrt/ folder would
    make ``import tensorrt`` succeed as an empty namespace package."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_api = _sibling("tensorrt_api")
BindingError = _api.BindingError
release_api = _api.release_api

TYPINGS = Path(__file__).resolve().parent
STUB_VERSION = "10.13.0.35.1"
BASE_BRANCH = "release/10.13"
LATER_BRANCHES = re.compile(r"release/11\.\d+")
REMOVED_LIST = TYPINGS / "tensorrt_removed_in_11.txt"

# (class, method, stub return type, patched return type). None on failure (nullptr) per the API docs:
# build_serialized_network ("None if an error occurred"), deserialize_cuda_engine, create_execution_context,
# create_timing_cache (nullptr for a blob it cannot deserialise), get_timing_cache ("or None if no timing
# cache is set", IBuilderConfig docs 10.13 and 11.1).
OPTIONAL_RETURNS = (
    ("Builder", "build_serialized_network", "IHostMemory", "IHostMemory | None"),
    ("Runtime", "deserialize_cuda_engine", "ICudaEngine", "ICudaEngine | None"),
    ("ICudaEngine", "create_execution_context", "IExecutionContext", "IExecutionContext | None"),
    ("IBuilderConfig", "create_timing_cache", "ITimingCache", "ITimingCache | None"),
    ("IBuilderConfig", "get_timing_cache", "ITimingCache", "ITimingCache | None"),
    ("OnnxParser", "get_error", "...", "ParserError"),
)


def stub_spans(text: str) -> dict[str, list[tuple[int, int]]]:
    """Qualified name -> line spans [start, end) (0-based, decorators included) of every class, function and
    annotated/plain assignment in the stub, at any class depth."""
    spans: dict[str, list[tuple[int, int]]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            names: list[str] = []
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [node.name]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            decorators = getattr(node, "decorator_list", [])
            start = min([node.lineno, *(d.lineno for d in decorators)]) - 1
            end = node.end_lineno or node.lineno
            for name in names:
                spans.setdefault(prefix + name, []).append((start, end))
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(text).body, "")
    return spans


def remove_names(text: str, removed: set[str]) -> tuple[str, list[str]]:
    """Delete the declarations of ``removed`` (qualified names) -> (text, names deleted)."""
    spans = stub_spans(text)
    hits = sorted(name for name in removed if name in spans)
    lines = text.split("\n")
    keep = [True] * len(lines)
    for name in hits:
        for start, end in spans[name]:
            keep[start:end] = [False] * (end - start)
    return "\n".join(line for line, k in zip(lines, keep, strict=True) if k), hits


def _remove_functions(
    text: str, describe: Callable[[str, ast.FunctionDef], str | None]
) -> tuple[str, list[str]]:
    """Delete every function (with its decorators) for which ``describe(qualified prefix, node)`` returns a
    description -> (text, the descriptions)."""
    tree = ast.parse(text)
    lines = text.split("\n")
    keep = [True] * len(lines)
    hits: list[str] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.FunctionDef) and (hit := describe(prefix, node)) is not None:
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
                keep[start : node.end_lineno] = [False] * ((node.end_lineno or start) - start)
                hits.append(hit)

    visit(tree.body, "")
    return "\n".join(line for line, k in zip(lines, keep, strict=True) if k), hits


def remove_dangling_overloads(text: str, classes: list[str]) -> tuple[str, list[str]]:
    """Delete the functions and overloads whose signature names a deleted class (e.g. the overload of
    ``Runtime.deserialize_cuda_engine`` that takes an ``IStreamReader``) -> (text, names of those deleted)."""
    if not classes:
        return text, []
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, classes)) + r")\b")

    def describe(prefix: str, node: ast.FunctionDef) -> str | None:
        signature = f"{ast.unparse(node.args)} -> {ast.unparse(node.returns or ast.Constant(None))}"
        return prefix + node.name if pattern.search(signature) else None

    return _remove_functions(text, describe)


def remove_overloads(text: str, gone: Overloads) -> tuple[str, list[str]]:
    """Delete the overloads of ``gone``'s methods whose parameter names (after ``self``) are one of the
    argument lists that some 11.x release no longer binds -> (text, "Class.method(args)" deleted)."""

    def describe(prefix: str, node: ast.FunctionDef) -> str | None:
        if prefix + node.name not in gone:
            return None
        params = tuple(a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs])
        params = params[1:] if params[:1] == ("self",) else params
        if params not in gone[prefix + node.name]:
            return None
        return f"{prefix}{node.name}({', '.join(params)})"

    return _remove_functions(text, describe)


def drop_lone_overload_decorators(text: str) -> str:
    """Remove ``@typing.overload`` from a function left with a single definition (mypy rejects a lone
    overload)."""
    tree = ast.parse(text)
    lines = text.split("\n")
    drop: list[int] = []

    def visit(body: list[ast.stmt]) -> None:
        functions: dict[str, list[ast.FunctionDef]] = {}
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.FunctionDef):
                functions.setdefault(node.name, []).append(node)
        for defs in functions.values():
            if len(defs) == 1:
                drop.extend(
                    d.lineno - 1 for d in defs[0].decorator_list if ast.unparse(d) == "typing.overload"
                )

    visit(tree.body)
    return "\n".join(line for i, line in enumerate(lines) if i not in set(drop))


def patch_returns(text: str, cls: str, method: str, old: str, new: str) -> str:
    """``cls.method``'s return annotation ``old`` -> ``new`` (every overload)."""
    spans = stub_spans(text)
    lines = text.split("\n")
    count = 0
    for start, end in spans.get(f"{cls}.{method}", []):
        for i in range(start, end):
            if lines[i].lstrip().startswith(f"def {method}(") and lines[i].endswith(f") -> {old}:"):
                lines[i] = lines[i][: -len(f"{old}:")] + f"{new}:"
                count += 1
    if count == 0:
        raise SystemExit(f"{cls}.{method} -> {old}: not found")
    return "\n".join(lines)


def make_parseable(text: str) -> str:
    text, n = re.subn(r"([(,] ?)in: ", r"\1in_: ", text)
    if n == 0:
        raise SystemExit("no `in:` parameters found")
    old = "channel_axis: int) -> IScaleLayer"
    if old not in text:
        raise SystemExit("add_scale_nd signature not found")
    text = text.replace(old, "channel_axis: int = ...) -> IScaleLayer")
    return text.replace("import typing\n", "import typing\nimport typing_extensions\n", 1)


def drop_top_level(text: str, names: list[str]) -> str:
    """Remove ``from tensorrt_bindings.tensorrt import NAME`` lines and ``'NAME'`` from ``__all__``."""
    for name in names:
        text, n = re.subn(rf"^from tensorrt_bindings\.tensorrt import {name}\n", "", text, flags=re.M)
        if n != 1:
            raise SystemExit(f"import of {name}: expected 1, found {n}")
        text = text.replace(f"'{name}', ", "")
    return text


Overloads = dict[str, set[tuple[str, ...]]]


def intersection(git_dir: Path) -> tuple[set[str], set[str], Overloads, list[str], list[str]]:
    """(10.13 API, names 10.13 binds that some 11.x release lacks, the argument lists of 10.13 overloads that
    some 11.x release no longer binds, provenance lines, the shared names whose argument names differ
    between 10.13 and some 11.x release, one line each)."""
    # Local branches (a bare or mirror clone) or origin's remote-tracking ones (an ordinary clone).
    refs = subprocess.run(
        [
            "git",
            "--git-dir",
            str(git_dir),
            "for-each-ref",
            "--format=%(refname)",
            "refs/heads",
            "refs/remotes",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    branches: dict[str, str] = {}
    for ref in refs:
        name = re.sub(r"^refs/(heads|remotes/origin)/", "", ref)
        branches.setdefault(name, ref)
    later = sorted(b for b in branches if LATER_BRANCHES.fullmatch(b))
    if BASE_BRANCH not in branches or not later:
        raise SystemExit(f"{git_dir}: need {BASE_BRANCH} and release/11.* branches, have {sorted(branches)}")
    base_commit, base = release_api(git_dir, branches[BASE_BRANCH])
    provenance = [f"{BASE_BRANCH} {base_commit}"]
    shared = set(base)
    changed: list[str] = []
    gone: Overloads = {}
    for branch in later:
        commit, api = release_api(git_dir, branches[branch])
        provenance.append(f"{branch} {commit}")
        shared &= set(api)
        changed += [
            f"{name}: {BASE_BRANCH} {_overloads(base[name])}, {branch} {_overloads(api[name])}"
            for name in sorted(set(base) & set(api))
            if base[name] != api[name]
        ]
        for name in set(base) & set(api):
            if base[name] - api[name]:
                gone.setdefault(name, set()).update(base[name] - api[name])
    return set(base), set(base) - shared, gone, provenance, changed


def _overloads(signatures: set[tuple[str, ...]]) -> str:
    return " | ".join(f"({', '.join(s)})" for s in sorted(signatures))


def main(wheel: Path, git_dir: Path) -> None:
    if STUB_VERSION not in wheel.name:
        raise SystemExit(f"{wheel.name}: expected tensorrt-stubs {STUB_VERSION}")
    try:
        base, removed, gone, provenance, changed = intersection(git_dir)
    except BindingError as exc:
        raise SystemExit(f"reading the binding sources: {exc}") from None
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.rmtree(TYPINGS / package, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith(("tensorrt/", "tensorrt_bindings/")) and member.endswith(".pyi"):
                target = TYPINGS / member
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))

    bindings = TYPINGS / "tensorrt_bindings" / "tensorrt.pyi"
    text = make_parseable(bindings.read_text(encoding="utf-8"))
    # Every class the stub declares must be one the 10.13 sources bind: else the reader missed a form.
    unknown = sorted(
        name for name in stub_spans(text) if "." not in name and name[0].isupper() and name not in base
    )
    if unknown:
        raise SystemExit(f"stub classes the 10.13 binding sources do not bind (reader gap?): {unknown}")
    text, deleted = remove_names(text, removed)
    top_level = [name for name in deleted if "." not in name]
    text, dangling = remove_dangling_overloads(text, top_level)
    if dangling:
        print(f"overloads naming a deleted class, deleted too: {', '.join(dangling)}")
    for name in top_level:
        text = text.replace(f"'{name}', ", "")  # from the module's __all__
    text, overloads = remove_overloads(text, gone)
    if overloads:
        print(f"overloads 11.x no longer binds, deleted: {', '.join(overloads)}")
    text = drop_lone_overload_decorators(text)
    for cls, method, old_type, new_type in OPTIONAL_RETURNS:
        text = patch_returns(text, cls, method, old_type, new_type)
    header = (
        "# Generated by typings/vendor_tensorrt_stubs.py: tensorrt-stubs "
        f"{STUB_VERSION} minus what these NVIDIA/TensorRT releases do not all bind: "
        + ", ".join(provenance)
        + "\n"
    )
    bindings.write_text(header + text, encoding="utf-8")

    for init in (TYPINGS / "tensorrt" / "__init__.pyi", TYPINGS / "tensorrt_bindings" / "__init__.pyi"):
        init_text = drop_top_level(init.read_text(encoding="utf-8"), top_level)
        # tensorrt_libs is a runtime-only package with no stubs; nothing here needs its contents.
        init_text = init_text.replace("import tensorrt_libs as tensorrt_libs\n", "tensorrt_libs: object\n")
        init.write_text(init_text, encoding="utf-8")

    not_in_stub = sorted(removed - set(deleted))
    REMOVED_LIST.write_text(
        "# Declarations of tensorrt-stubs "
        f"{STUB_VERSION} deleted because not every release read binds them (generated by "
        "vendor_tensorrt_stubs.py):\n# "
        + "\n# ".join(provenance)
        + "\n"
        + "".join(f"{name}\n" for name in deleted)
        + "".join(f"{name}  # the overload naming a deleted class\n" for name in dangling)
        + "".join(f"{name}  # an overload 11.x no longer binds\n" for name in overloads)
        + "# Bound by 10.13, not by every 11.x, and not declared by the stub either:\n"
        + "".join(f"# {name}\n" for name in not_in_stub)
        + "# Bound with other argument lists in 11.x (10.13 overloads that 11.x lacks are deleted above; "
        "11.x-only overloads are not added):\n" + "".join(f"# {line}\n" for line in changed),
        encoding="utf-8",
    )
    print(
        f"{len(deleted)} declarations deleted ({len(not_in_stub)} more were not in the stub); "
        f"see {REMOVED_LIST}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
