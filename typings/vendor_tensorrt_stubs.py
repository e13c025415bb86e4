"""Vendor the tensorrt-stubs .pyi files into typings/ and patch them for mypy and for TensorRT 10.x AND 11.x.

Usage (from the repository root; the wheel is only unpacked, never installed, because an installed
``tensorrt-stubs`` makes ``import tensorrt`` succeed as an empty namespace package):

    pip download --no-deps tensorrt-stubs==10.13.0.35.1 -d /tmp/trtstubs
    python typings/vendor_tensorrt_stubs.py /tmp/trtstubs/tensorrt_stubs-10.13.0.35.1-py3-none-any.whl

The stubs describe TensorRT 10.13. The patches below do three things, each asserted so that a different stub
release fails loudly instead of being half-patched:

1. make the files parse (parameters named ``in``; a non-default parameter after default ones; an import of the
   runtime-only ``tensorrt_libs`` package; the undeclared ``typing_extensions`` name);
2. say what the bindings really return where the stubs promise an object but the call returns ``None`` on
   failure (``build_serialized_network``, ``deserialize_cuda_engine``, ``create_execution_context``) and give
   ``OnnxParser.get_error`` its real ``ParserError`` type;
3. delete the APIs that TensorRT 11 removed, so that mypy rejects code that would only run on 10.x.
   Source: the TensorRT 11 migration guide, "Removed Python APIs and Replacements"
   (docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html)
   and the TensorRT 11.0 Python API pages for Builder, NetworkDefinitionCreationFlag and ICudaEngine.
   The result types code against the intersection of TensorRT 10.13 and 11.x.
"""

from __future__ import annotations

import re
import shutil
import sys
import zipfile
from pathlib import Path

TYPINGS = Path(__file__).resolve().parent
STUB_VERSION = "10.13.0.35.1"

# TensorRT 11 removed these BuilderFlag members (strong typing replaces weak-typing precision flags).
REMOVED_BUILDER_FLAGS = (
    "FP16",
    "INT8",
    "FP8",
    "BF16",
    "INT4",
    "FP4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "DIRECT_IO",
)
# (class, member) pairs removed in TensorRT 11.
REMOVED_MEMBERS = (
    ("Builder", "platform_has_fast_fp16"),
    ("Builder", "platform_has_fast_int8"),
    ("Builder", "platform_has_tf32"),
    ("IBuilderConfig", "int8_calibrator"),
    ("IBuilderConfig", "algorithm_selector"),
    ("IBuilderConfig", "quantization_flags"),
    ("IBuilderConfig", "set_calibration_profile"),
    ("IBuilderConfig", "get_calibration_profile"),
    ("IBuilderConfig", "set_quantization_flag"),
    ("IBuilderConfig", "get_quantization_flag"),
    ("IBuilderConfig", "clear_quantization_flag"),
    ("ICudaEngine", "device_memory_size"),
    ("ICudaEngine", "get_device_memory_size_for_profile"),
    ("ICudaEngine", "has_implicit_batch_dimension"),
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
)
# Whole classes removed in TensorRT 11 (implicit INT8 calibration; algorithm selection).
REMOVED_CLASSES = (
    "IInt8Calibrator",
    "IInt8EntropyCalibrator",
    "IInt8EntropyCalibrator2",
    "IInt8LegacyCalibrator",
    "IInt8MinMaxCalibrator",
    "IAlgorithm",
    "IAlgorithmContext",
    "IAlgorithmIOInfo",
    "IAlgorithmSelector",
    "IAlgorithmVariant",
)
# (class, method, stub return type, patched return type): None on failure in the real bindings.
OPTIONAL_RETURNS = (
    ("Builder", "build_serialized_network", "IHostMemory", "IHostMemory | None"),
    ("Runtime", "deserialize_cuda_engine", "ICudaEngine", "ICudaEngine | None"),
    ("ICudaEngine", "create_execution_context", "IExecutionContext", "IExecutionContext | None"),
    ("OnnxParser", "get_error", "...", "ParserError"),
)


def _class_span(lines: list[str], name: str) -> tuple[int, int]:
    """Line range [start, end) of top-level ``class name``: up to the next non-empty column-0 line."""
    starts = [i for i, line in enumerate(lines) if re.match(rf"class {name}[(:]", line)]
    if len(starts) != 1:
        raise SystemExit(f"class {name}: expected 1 definition, found {len(starts)}")
    start = starts[0]
    end = start + 1
    while end < len(lines) and (not lines[end] or lines[end].startswith((" ", "\t"))):
        end += 1
    return start, end


def _is_member_start(line: str) -> bool:
    """A line that starts a class member at indentation 4 (decorator, def, nested class or attribute)."""
    return re.match(r"    (@|def |class |[A-Za-z_][A-Za-z0-9_]*\s*:)", line) is not None


def remove_member(lines: list[str], cls: str, member: str) -> list[str]:
    """Delete every definition of ``cls.member`` (attribute, property, overloads) with its decorators."""
    start, end = _class_span(lines, cls)
    pattern = re.compile(rf"    (def {member}\(|{member}\s*:)")
    hits = [i for i in range(start, end) if pattern.match(lines[i])]
    if not hits:
        raise SystemExit(f"{cls}.{member}: not found")
    keep = [True] * len(lines)
    for hit in hits:
        first = hit
        while first - 1 > start and lines[first - 1].startswith("    @"):
            first -= 1
        last = hit + 1
        while last < end and not _is_member_start(lines[last]):
            last += 1
        for i in range(first, last):
            keep[i] = False
    return [line for line, k in zip(lines, keep, strict=True) if k]


def remove_class(lines: list[str], cls: str) -> list[str]:
    start, end = _class_span(lines, cls)
    return lines[:start] + lines[end:]


def patch_returns(lines: list[str], cls: str, method: str, old: str, new: str) -> list[str]:
    start, end = _class_span(lines, cls)
    count = 0
    for i in range(start, end):
        if lines[i].startswith(f"    def {method}(") and lines[i].endswith(f") -> {old}:"):
            lines[i] = lines[i][: -len(f"{old}:")] + f"{new}:"
            count += 1
    if count == 0:
        raise SystemExit(f"{cls}.{method} -> {old}: not found")
    return lines


def drop_names(text: str, names: tuple[str, ...]) -> str:
    """Remove ``from tensorrt_bindings.tensorrt import NAME`` lines and the names from ``__all__``."""
    for name in names:
        text, n = re.subn(rf"^from tensorrt_bindings\.tensorrt import {name}\n", "", text, flags=re.M)
        if n != 1:
            raise SystemExit(f"import of {name}: expected 1, found {n}")
        text = text.replace(f"'{name}', ", "")
    return text


def patch_bindings(text: str) -> str:
    # 1. Parse errors: parameters named `in` (a keyword) and a non-default parameter after defaults.
    text, n = re.subn(r"([(,] ?)in: ", r"\1in_: ", text)
    if n == 0:
        raise SystemExit("no `in:` parameters found")
    old = "channel_axis: int) -> IScaleLayer"
    if old not in text:
        raise SystemExit("add_scale_nd signature not found")
    text = text.replace(old, "channel_axis: int = ...) -> IScaleLayer")
    text = text.replace("import typing\n", "import typing\nimport typing_extensions\n", 1)

    lines = text.split("\n")
    for flag in REMOVED_BUILDER_FLAGS:
        lines = remove_member(lines, "BuilderFlag", flag)
    for cls, member in REMOVED_MEMBERS:
        lines = remove_member(lines, cls, member)
    for cls in REMOVED_CLASSES:
        lines = remove_class(lines, cls)
    for cls, method, old_type, new_type in OPTIONAL_RETURNS:
        lines = patch_returns(lines, cls, method, old_type, new_type)
    text = "\n".join(lines)
    for cls in REMOVED_CLASSES:
        text = text.replace(f"'{cls}', ", "")
    return text


def main(wheel: Path) -> None:
    if STUB_VERSION not in wheel.name:
        raise SystemExit(f"{wheel.name}: expected tensorrt-stubs {STUB_VERSION}")
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.rmtree(TYPINGS / package, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith(("tensorrt/", "tensorrt_bindings/")) and member.endswith(".pyi"):
                target = TYPINGS / member
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))

    bindings = TYPINGS / "tensorrt_bindings" / "tensorrt.pyi"
    bindings.write_text(patch_bindings(bindings.read_text(encoding="utf-8")), encoding="utf-8")
    for init in (TYPINGS / "tensorrt" / "__init__.pyi", TYPINGS / "tensorrt_bindings" / "__init__.pyi"):
        text = drop_names(init.read_text(encoding="utf-8"), REMOVED_CLASSES)
        # tensorrt_libs is a runtime-only package with no stubs; nothing here needs its contents.
        text = text.replace("import tensorrt_libs as tensorrt_libs\n", "tensorrt_libs: object\n")
        init.write_text(text, encoding="utf-8")
    print(f"patched stubs written under {TYPINGS}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
