"""The Python API a TensorRT release exposes, read from its pybind11 binding sources (no TensorRT needed).

NVIDIA/TensorRT keeps the bindings of the ``tensorrt`` module in ``python/src/**/*.cpp`` (pybind11) and a
thin Python layer in ``python/packaging/bindings_wheel/tensorrt/__init__.py``. :func:`binding_api` reads the
C++ sources and returns every name they bind, qualified (``"Builder"``, ``"Builder.platform_has_fast_fp16"``,
``"BuilderFlag.FP16"``, ``"ILogger.Severity.ERROR"``); :func:`python_layer_api` adds the module-level names of
the Python layer. Comparing two releases' sets says what one has and the other lacks, which is what
``vendor_tensorrt_stubs.py`` needs to cut the stubs down to the API that TensorRT 10.13 and 11.x share.

What is read (pybind11 forms used by these sources): ``py::class_<...>(scope, "Name", ...)`` and
``py::class_<...> var{scope, "Name", ...}``, ``py::enum_<...>(scope, "Name", ...)``,
``py::bind_vector<...>(scope, "Name")`` / ``bind_map``; their chained or later ``var.def...`` calls
(``.def``, ``.def_static``, ``.def_property``, ``.def_property_readonly``, ``.def_readwrite``,
``.def_readonly``, the ``_static`` property forms, ``.value``); ``m.def("name", ...)`` and
``m.attr("name")``. ``scope`` is ``m`` (the module) or a variable bound to a class. Preprocessor conditions
are evaluated for the public wheel (:data:`MACROS`); an unknown condition is an error, so a new kind of
``#if`` cannot silently add or drop bindings.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

# The public `tensorrt` wheel: all bindings exported (not the lean/dispatch runtimes), no INetwork
# serialisation (ENABLE_INETWORK_SERIALIZE is not defined by the public CMake files), a current pybind11,
# and Linux.
MACROS: dict[str, bool] = {
    "EXPORT_ALL_BINDINGS": True,
    "ENABLE_INETWORK_SERIALIZE": False,
    "PYBIND11_VERSION_MAJOR < 2 || PYBIND11_VERSION_MAJOR == 2 && PYBIND11_VERSION_MINOR < 6": False,
    "defined(_WIN32)": False,
    "!defined(WIN32_LEAN_AND_MEAN)": True,
}
_BINDER_METHODS = {
    "def",
    "def_static",
    "def_property",
    "def_property_readonly",
    "def_readwrite",
    "def_readonly",
    "def_property_static",
    "def_property_readonly_static",
    "value",
}
_TOKEN = re.compile(
    r'(?P<str>R"(?P<delim>[^(\s]*)\((?s:.*?)\)(?P=delim)"|"(?:\\.|[^"\\])*")'
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_~][A-Za-z0-9_]*)*)"
    r"|(?P<punct>->|::|[^\sA-Za-z0-9_])"
    r"|(?P<num>[0-9][0-9A-Za-z_.']*)"
)


class BindingError(Exception):
    """The sources use a form this reader does not know; fix the reader rather than guess."""


def strip_comments(text: str) -> str:
    """C++ source without ``//`` and ``/* */`` comments (string literals, raw ones included, kept)."""
    out: list[str] = []
    i = 0
    pattern = re.compile(r'R"([^(\s]*)\(|"|//|/\*|\'')
    while True:
        match = pattern.search(text, i)
        if match is None:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : match.start()])
        token = match.group(0)
        if token.startswith('R"'):
            end = text.index(f'){match.group(1)}"', match.end()) + len(match.group(1)) + 2
            out.append(text[match.start() : end])
            i = end
        elif token in {'"', "'"}:
            j = match.end()
            while text[j] != token:
                j += 2 if text[j] == "\\" else 1
            out.append(text[match.start() : j + 1])
            i = j + 1
        elif token == "//":
            end = text.find("\n", match.end())
            i = len(text) if end < 0 else end
        else:
            i = text.index("*/", match.end()) + 2
            out.append(" ")


def preprocess(text: str, macros: Mapping[str, bool] = MACROS) -> str:
    """Keep the lines the preprocessor keeps for ``macros``; ``#include``/``#define`` lines are dropped."""
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (this branch active, some branch of this #if taken)
    for line in text.split("\n"):
        directive = re.match(r"\s*#\s*(\w+)\s*(.*?)\s*$", line)
        active = all(frame[0] for frame in stack)
        if directive is None:
            out.append(line if active else "")
            continue
        name, arg = directive.groups()
        if name in ("if", "ifdef", "ifndef"):
            cond = arg if name == "if" else f"defined({arg})" if name == "ifdef" else f"!defined({arg})"
            if cond not in macros:
                raise BindingError(f"unknown preprocessor condition '#{name} {arg}'")
            stack.append((macros[cond], macros[cond]))
        elif name == "elif":
            raise BindingError(f"#elif is not handled ('{line.strip()}')")
        elif name == "else":
            _, taken = stack[-1]
            stack[-1] = (not taken, True)
        elif name == "endif":
            stack.pop()
        out.append("")
    if stack:
        raise BindingError("unterminated #if")
    return "\n".join(out)


def _tokens(text: str) -> list[str]:
    return [m.group(0) for m in _TOKEN.finditer(text)]


def _string(token: str) -> str | None:
    if token.startswith('"') and token.endswith('"'):
        return token[1:-1]
    return None


def _skip_template(tokens: list[str], i: int) -> int:
    """Index after the ``<...>`` starting at ``tokens[i] == "<"``."""
    depth = 0
    while True:
        if tokens[i] == "<":
            depth += 1
        elif tokens[i] == ">":
            depth -= 1
            if depth == 0:
                return i + 1
        elif tokens[i] == ">>":  # never produced by the tokenizer, kept for clarity
            depth -= 2
        i += 1


def _matching(tokens: list[str], i: int) -> int:
    """Index of the bracket closing the one at ``tokens[i]``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    opening, closing = tokens[i], pairs[tokens[i]]
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] == opening:
            depth += 1
        elif tokens[j] == closing:
            depth -= 1
            if depth == 0:
                return j
    raise BindingError(f"unbalanced '{opening}'")


Api = dict[str, set[tuple[str, ...]]]  # qualified name -> keyword lists of its bound overloads


def _keywords(tokens: list[str], start: int, end: int) -> tuple[str, ...]:
    """The argument names of one binding call: ``"x"_a`` and ``py::arg("x")`` in ``tokens[start:end]``."""
    found = []
    for j in range(start, end):
        name = _string(tokens[j])
        if name is not None and (tokens[j + 1] == "_a" or tokens[j - 2 : j] == ["py::arg", "("]):
            found.append(name)
    return tuple(found)


def _chain(tokens: list[str], i: int, owner: str, names: Api) -> int:
    """Read ``.def("x", ...)``-style calls from ``tokens[i]`` on; add ``owner.x``; return the index after."""
    while i + 2 < len(tokens) and tokens[i] == "." and tokens[i + 2] == "(":
        method = tokens[i + 1]
        close = _matching(tokens, i + 2)
        if method in _BINDER_METHODS:
            name = _string(tokens[i + 3])
            if name is not None:
                names.setdefault(f"{owner}.{name}", set()).add(_keywords(tokens, i + 4, close))
            elif not tokens[i + 3].startswith(("py::init", "py::pickle", "py::self")):
                raise BindingError(f"{owner}.{method}: first argument {tokens[i + 3]!r} is not a name")
        i = close + 1
    return i


def binding_api(sources: Mapping[str, str]) -> set[str]:
    """Every qualified name the pybind11 sources bind (``sources``: file name -> C++ text)."""
    return set(binding_signatures(sources))


def binding_signatures(sources: Mapping[str, str]) -> Api:
    """Every qualified name the sources bind -> the argument-name lists of its overloads (``()`` for classes,
    enum values and calls without named arguments)."""
    names: Api = {}
    for filename, text in sources.items():
        try:
            tokens = _tokens(preprocess(strip_comments(text)))
            _read_bindings(tokens, names)
        except BindingError as exc:
            raise BindingError(f"{filename}: {exc}") from None
    return names


def _read_bindings(tokens: list[str], names: Api) -> None:
    variables: dict[str, str] = {}  # C++ variable -> qualified class it binds
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("py::class_", "py::enum_", "py::bind_vector", "py::bind_map") and tokens[i + 1] == "<":
            j = _skip_template(tokens, i + 1)
            variable = None
            if tokens[j] not in ("(", "{"):  # py::class_<...> var{...} / var(...)
                variable, j = tokens[j], j + 1
            if tokens[j] not in ("(", "{"):
                i = j  # a type, e.g. a function's parameter `py::class_<X>& binding`
                continue
            scope, comma, title = tokens[j + 1], tokens[j + 2], _string(tokens[j + 3])
            if comma != "," or title is None:
                raise BindingError(f'{token} without (scope, "Name"): {tokens[j : j + 4]}')
            owner = title if scope == "m" else f"{variables[scope]}.{title}"
            names.setdefault(owner, set()).add(())
            if variable is not None:
                variables[variable] = owner
            i = _chain(tokens, _matching(tokens, j) + 1, owner, names)
        elif token in variables and tokens[i + 1] == ".":
            i = _chain(tokens, i + 1, variables[token], names)
        elif (
            token == "m"
            and tokens[i + 1] == "."
            and tokens[i + 2] in ("def", "attr")
            and tokens[i + 3] == "("
        ):
            name = _string(tokens[i + 4])
            if name is None:
                raise BindingError(f"m.{tokens[i + 2]} without a name: {tokens[i + 4]!r}")
            close = _matching(tokens, i + 3)
            names.setdefault(name, set()).add(_keywords(tokens, i + 5, close))
            i = close + 1
        else:
            i += 1


def python_layer_api(text: str) -> set[str]:
    """Module-level functions and names the Python layer (``tensorrt/__init__.py``) defines."""
    names = set(re.findall(r"^def (\w+)\(", text, re.M))
    names |= set(re.findall(r"^(\w+)\s*(?::[^=\n]*)?=(?!=)", text, re.M))
    names |= {f"{cls}.{attr}" for cls, attr in re.findall(r"^(\w+)\.(\w+)\s*=(?!=)", text, re.M)}
    return names


def _git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True, check=True
    ).stdout


def release_api(git_dir: Path, ref: str) -> tuple[str, Api]:
    """(commit, API with argument names) of the TensorRT release ``ref`` (e.g. ``release/10.13``) in the git
    repository; the Python layer's names have no argument lists (``()``)."""
    commit = _git(git_dir, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    files = [
        f
        for f in _git(git_dir, "ls-tree", "-r", "--name-only", commit, "python/src").split()
        if f.endswith(".cpp")
    ]
    if not files:
        raise BindingError(f"{ref}: no python/src/*.cpp binding sources")
    api = binding_signatures({f: _git(git_dir, "show", f"{commit}:{f}") for f in files})
    layer = _git(git_dir, "show", f"{commit}:python/packaging/bindings_wheel/tensorrt/__init__.py")
    for name in python_layer_api(layer):
        api.setdefault(name, set()).add(())
    return commit, api
