"""The report's INT8 debugging section, from ``results/int8_debug/<model>.json`` (rule ``int8_debug``).

Read as plain checked JSON (schema ``int8_debug.schema.json``): the report imports no ONNX or numpy code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from panoptic_deploy.errors import BenchError
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.jsonfiles import read_checked_json

INT8_DEBUG_SCHEMA = "int8_debug.schema.json"


def _db(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _tensor_rows(tensors: Sequence[Mapping[str, Any]], top: int) -> list[str]:
    lines = [
        "| tensor | module | read by (ONNX nodes) | local SQNR dB | cumulative SQNR dB | clipped % |",
        "|---|---|---|---|---|---|",
    ]
    for t in tensors[:top]:
        readers = ", ".join(f"`{c}`" for c in t["consumers"])
        modules = "; ".join(t["modules"]) or "–"
        lines.append(
            f"| `{t['tensor']}` | {modules} | {readers} | {_db(t['local_sqnr_db'])} "
            f"| {_db(t['cumulative_sqnr_db'])} | {100 * t['clipped_fraction']:.2f} |"
        )
    return lines


def _search_lines(search: Mapping[str, Any]) -> list[str]:
    state = "passes" if search["passed"] else "does not pass"
    lines = [
        "Sensitivity search (each module run unquantized in turn, ranked by the PQ it gives back): PQ "
        f"points lost vs torch FP32 {search['initial_loss']:.2f} -> {search['final_loss']:.2f} after "
        f"re-quantizing with its exclusions, which {state} the budget of {search['budget']:g} "
        f"({search.get('evaluations', len(search['steps']))} evaluations, {search['seconds']:.0f} s).",
        "",
    ]
    if search["exclusions"]:
        lines += [f"- {e['group']}: {len(e['nodes'])} node(s)" for e in search["exclusions"]]
        lines += ["", "To apply it, paste into the config:", "", "```yaml", search["config_snippet"].rstrip()]
        lines += ["```", ""]
    else:
        lines += ["No module's exclusion lowered the loss.", ""]
    return lines


def int8_debug_lines(paths: Sequence[PathLike], top: int = 10) -> list[str]:
    """``## INT8 debugging``: per model, the gate's decision, the ``top`` worst tensors (node names, module
    names, local and cumulative SQNR, clipped share) and the search's exclusions; [] without files."""
    if not paths:
        return []
    lines = ["## INT8 debugging", ""]
    for path in paths:
        data = read_checked_json(path, INT8_DEBUG_SCHEMA, "INT8 debug result", BenchError)
        lines += [f"### {data['model']}", ""]
        debug = data["debug"]
        if data["status"] == "gate passed":
            lines += ["Every INT8 row passed its gate: not debugged (config `int8.debug: auto`).", ""]
            continue
        failed = [r["row"] for r in data["gate_rows"] if r["status"] != "PASS"]
        why = f"INT8 gate not passed by {', '.join(failed)}" if failed else "config `int8.debug: true`"
        outputs = ", ".join(f"{o['name']} {o['sqnr_db']:.1f} dB" for o in debug["outputs"])
        lines += [
            f"Debugged because: {why}. FP32 vs INT8 on {debug['inputs']} calibration image(s) at every "
            f"activation Q/DQ pair ({len(debug['tensors'])} pairs, {debug['seconds']:.0f} s); local SQNR is "
            "what the pair's own quantization loses, cumulative everything lost up to it. Output SQNR: "
            f"{outputs}.",
            "",
            *_tensor_rows(debug["tensors"], top),
            "",
        ]
        if debug["search"] is not None:
            lines += _search_lines(debug["search"])
    return lines
