"""The stub generator in typings/: reading pybind11 binding sources and cutting the stubs to the shared API.

The C++ below is written for these tests in the forms NVIDIA's binding sources use (no NVIDIA source is
copied); nothing needs TensorRT. The last test checks the committed stubs against the committed list of
what the generator deleted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TYPINGS = Path(__file__).resolve().parents[1] / "typings"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TYPINGS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


api = _load("tensorrt_api")
vendor = _load("vendor_tensorrt_stubs")

BINDINGS = r"""
#include "ForwardDeclarations.h"
namespace tensorrt
{
// py::class_<Commented>(m, "Commented") is in a comment
void bindCore(py::module& m)
{
    py::class_<ILogger, PyLogger> loggerBinding{m, "ILogger", "a \"quoted\" doc", py::module_local()};
    py::enum_<ILogger::Severity>(loggerBinding, "Severity", py::arithmetic{})
        .value("ERROR", ILogger::Severity::kERROR)
        .value("WARNING", ILogger::Severity::kWARNING);
    loggerBinding.def(py::init<>()).def("log", &ILogger::log, "severity"_a, "msg"_a);

    py::class_<IBuilderConfig>(m, "IBuilderConfig", R"trtdoc(
        .def("not_a_binding", ...) inside a raw docstring
    )trtdoc")
        .def_property("flags", &IBuilderConfig::getFlags, &IBuilderConfig::setFlags)
        .def("create_timing_cache", lambdas::create, "serialized_timing_cache"_a, /* note */ Doc::x)
#if EXPORT_ALL_BINDINGS
        .def_property_readonly("num_optimization_profiles", &IBuilderConfig::getNbOptimizationProfiles)
#endif
#if ENABLE_INETWORK_SERIALIZE
        .def("serialize", lambdas::serialize)
#endif
        .def_static("make", &make);
    py::bind_vector<std::vector<size_t>>(m, "NodeIndices");
    m.def("get_plugin_registry", &getPluginRegistry, py::return_value_policy::reference);
}
}
"""


def test_binding_api_reads_classes_members_values_and_conditions() -> None:
    names = api.binding_api({"pyCore.cpp": BINDINGS})
    assert names == {
        "ILogger",
        "ILogger.Severity",
        "ILogger.Severity.ERROR",
        "ILogger.Severity.WARNING",
        "ILogger.log",
        "IBuilderConfig",
        "IBuilderConfig.flags",
        "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.num_optimization_profiles",  # EXPORT_ALL_BINDINGS: the full wheel
        "IBuilderConfig.make",
        "NodeIndices",
        "get_plugin_registry",
    }  # no "serialize" (ENABLE_INETWORK_SERIALIZE is off), nothing from comments or docstrings


def test_argument_names_of_each_overload_are_read() -> None:
    signatures = api.binding_signatures({"pyCore.cpp": BINDINGS})
    assert signatures["ILogger.log"] == {("severity", "msg")}
    assert signatures["IBuilderConfig.create_timing_cache"] == {("serialized_timing_cache",)}
    assert signatures["IBuilderConfig.flags"] == {()} and signatures["ILogger.Severity.ERROR"] == {()}
    overloads = 'py::class_<N>(m, "N").def("add", &f, "input"_a).def("add", &g, py::arg("input"), "k"_a = 1);'
    assert api.binding_signatures({"x.cpp": overloads})["N.add"] == {("input",), ("input", "k")}


def test_unknown_forms_fail_instead_of_being_guessed() -> None:
    with pytest.raises(api.BindingError, match=r"x\.cpp: unknown preprocessor condition '#if NEW_FLAG'"):
        api.binding_api({"x.cpp": "#if NEW_FLAG\nint a;\n#endif\n"})
    with pytest.raises(api.BindingError, match="first argument 'name' is not a name"):
        api.binding_api({"x.cpp": 'py::class_<A>(m, "A").def(name, &A::f);'})


def test_python_layer_names() -> None:
    layer = "import os\n__version__ = '1'\ndef volume(it):\n    pass\nICudaEngine.__enter__ = common_enter\n"
    assert api.python_layer_api(layer) == {"__version__", "volume", "ICudaEngine.__enter__"}


STUB = '''\
from __future__ import annotations
import typing
__all__ = ['Builder', 'Reader', 'Runtime']
class Builder:
    """doc"""
    class Flag:
        FP16: typing.ClassVar[Builder.Flag]  # value = <Flag.FP16: 0>
        TF32: typing.ClassVar[Builder.Flag]  # value = <Flag.TF32: 1>
    @property
    def fast_fp16(self) -> bool:
        """doc"""
    def build(self) -> bytes:
        ...
class Reader:
    def read(self) -> bytes:
        ...
class Runtime:
    @typing.overload
    def load(self, data: bytes) -> int:
        ...
    @typing.overload
    def load(self, reader: Reader) -> int:
        ...
'''


def test_stub_cut_deletes_members_classes_and_overloads_that_name_them() -> None:
    text, deleted = vendor.remove_names(STUB, {"Builder.Flag.FP16", "Builder.fast_fp16", "Reader", "Gone"})
    assert deleted == ["Builder.Flag.FP16", "Builder.fast_fp16", "Reader"]
    text, dangling = vendor.remove_dangling_overloads(text, ["Reader"])
    assert dangling == ["Runtime.load"]
    spans = vendor.stub_spans(text)
    assert set(spans) == {
        "__all__",
        "Builder",
        "Builder.Flag",
        "Builder.Flag.TF32",
        "Builder.build",
        "Runtime",
        "Runtime.load",
    }
    assert len(spans["Runtime.load"]) == 1 and "def load(self, data: bytes) -> int:" in text
    assert "@property" not in text  # the decorator went with its member
    patched = vendor.patch_returns(text, "Builder", "build", "bytes", "bytes | None")
    assert "def build(self) -> bytes | None:" in patched
    with pytest.raises(SystemExit, match=r"Builder\.absent -> bytes: not found"):
        vendor.patch_returns(text, "Builder", "absent", "bytes", "bytes | None")


def test_overloads_11x_no_longer_binds_are_deleted() -> None:
    stub = (
        "import typing\n"
        "class Network:\n"
        "    @typing.overload\n"
        "    def add_quantize(self, input: int, scale: int) -> int:\n"
        "        ...\n"
        "    @typing.overload\n"
        "    def add_quantize(self, input: int, scale: int, output_type: int) -> int:\n"
        "        ...\n"
    )
    text, hits = vendor.remove_overloads(stub, {"Network.add_quantize": {("input", "scale")}})
    assert hits == ["Network.add_quantize(input, scale)"]
    text = vendor.drop_lone_overload_decorators(text)
    assert text == (
        "import typing\n"
        "class Network:\n"
        "    def add_quantize(self, input: int, scale: int, output_type: int) -> int:\n"
        "        ...\n"
    )


def test_committed_stubs_lack_everything_the_generator_deleted() -> None:
    listed = (TYPINGS / "tensorrt_removed_in_11.txt").read_text(encoding="utf-8").splitlines()
    provenance = [line for line in listed if line.startswith("# release/")]
    assert [line.split()[1] for line in provenance] == ["release/10.13", "release/11.0", "release/11.1"]
    deleted = [line.split()[0] for line in listed if line and not line.startswith("#")]
    overloads = {line.split("(")[0].split()[0] for line in listed if "overload" in line and "  # " in line}
    assert len(deleted) >= 100
    stub = (TYPINGS / "tensorrt_bindings" / "tensorrt.pyi").read_text(encoding="utf-8")
    declared = set(vendor.stub_spans(stub))
    assert not (set(deleted) - overloads) & declared
    assert {
        "BuilderFlag.FP16",
        "ILayer.precision",
        "IInt8Calibrator",
        "ICudaEngine.device_memory_size",
    } <= set(deleted)
    # kept: 11.1 still binds DIRECT_IO; the timing-cache getters may return None
    assert "BuilderFlag.DIRECT_IO" in declared
    assert "def get_timing_cache(self) -> ITimingCache | None:" in stub
    assert (
        "def create_timing_cache(self, serialized_timing_cache: typing_extensions.Buffer) "
        "-> ITimingCache | None:" in stub
    )
