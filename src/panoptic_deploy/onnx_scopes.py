"""Which model module each ONNX node came from, kept through simplification.

torch.onnx's dynamo exporter names nodes flatly (``node_conv2d_3``, ``node_Conv_14``) and writes the module
scope into each node's ``metadata_props`` instead: ``pkg.torch.onnx.name_scopes`` (e.g.
``['', 'backbone', 'backbone.res2', 'backbone.res2.0', 'backbone.res2.0.conv1', 'conv2d_3']``, the last entry
the op) and ``pkg.torch.onnx.class_hierarchy`` (the module classes, entry by entry). The legacy exporter puts
the scope into the node name (``/backbone/res2/res2.0/conv1/Conv``). Measured with onnxsim 0.8.1 and onnxslim
(the two simplifiers of ``export.simplify_onnx``): both keep the names of the nodes they keep but drop every
node's ``metadata_props``, so the simplified model (the one calibration, INT8 and the engines start from)
no longer says which module a node belongs to.

:func:`carry_module_scopes` copies the scope of every surviving node (matched by name) from the export into
the simplified model, as a node ``metadata_props`` entry :data:`NODE_SCOPE_KEY` (visible in Netron) and as
one JSON map in the model's ``metadata_props`` under :data:`MODEL_SCOPES_KEY`. ModelOpt's INT8 quantization
keeps node names, so the map of the FP32 model also names the modules of the INT8 model's nodes.

The ops of the top-level module's own ``forward`` (PanopticFCN's candidate selection, kernel fusion and
maskness algebra: 319 of the demo's 752 nodes) have no module below the model, so the exporter's scope says
only ``(PanopticFCN)``. :func:`module_scopes` names them by where they sit in the data flow instead, which
the graph states exactly: the modules whose outputs they compute on and the graph outputs they feed, e.g.
``PanopticFCN.forward: kernel_head, position_head -> stuff_probs`` (the stuff kernels' per-level
averaging).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
CLASS_HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"
NODE_SCOPE_KEY = "panoptic_deploy.module"
MODEL_SCOPES_KEY = "panoptic_deploy.module_scopes"
# The scope of an op of the top-level module's own forward: "(ClassName)" (node_scope's form).
_TOP_LEVEL = re.compile(r"\((\w+)\)")


def _literal_list(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def node_scope(node: onnx.NodeProto) -> str | None:
    """``"<module path> (<class>)"`` of one node, e.g. ``"backbone.res2.0.conv1 (Conv2d)"``;
    ``"(PanopticFCN)"`` for an op of the top-level module's own ``forward``; ``None`` when the node
    carries no scope.

    Read from, in order: our own :data:`NODE_SCOPE_KEY`, the dynamo exporter's name scopes and class
    hierarchy, or a legacy-exporter name ``/a/b/Op`` (-> ``a/b``)."""
    props = {p.key: p.value for p in node.metadata_props}
    if NODE_SCOPE_KEY in props:
        return str(props[NODE_SCOPE_KEY])
    scopes = _literal_list(props.get(NAME_SCOPES_KEY, ""))
    if scopes and len(scopes) >= 2:
        classes = _literal_list(props.get(CLASS_HIERARCHY_KEY, "")) or []
        # The last entry is the op itself; the one before it is the innermost module.
        module = scopes[-2]
        cls = classes[len(scopes) - 2].rsplit(".", 1)[-1] if len(classes) == len(scopes) else ""
        if module and cls:
            return f"{module} ({cls})"
        return module or (f"({cls})" if cls else None)
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return node.name[1:].rsplit("/", 1)[0]
    return None


def module_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> module scope for every node whose scope is known: the model's :data:`MODEL_SCOPES_KEY`
    map (written by :func:`carry_module_scopes`) first, then each node's own metadata or name."""
    scopes: dict[str, str] = {}
    for prop in model.metadata_props:
        if prop.key == MODEL_SCOPES_KEY:
            try:
                stored = json.loads(prop.value)
            except json.JSONDecodeError:
                stored = {}
            if isinstance(stored, Mapping):
                scopes.update({str(k): str(v) for k, v in stored.items()})
    for node in model.graph.node:
        if node.name and node.name not in scopes:
            scope = node_scope(node)
            if scope is not None:
                scopes[node.name] = scope
    return _label_top_level(model, scopes)


def _label_top_level(model: onnx.ModelProto, scopes: dict[str, str]) -> dict[str, str]:
    """Replace every ``"(Cls)"`` scope (an op of the top-level forward) by ``"Cls.forward: <modules it
    computes on> -> <graph outputs it feeds>"``: the nearest ancestors with a module scope (their top-level
    module names) and the graph outputs reachable from the node, both in graph order."""
    nodes = list(model.graph.node)
    if not any(_TOP_LEVEL.fullmatch(scopes.get(n.name, "")) for n in nodes):
        return scopes
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    outputs = [o.name for o in model.graph.output]
    # Forward pass (graph order is topological): the modules each top-level node's values come from.
    sources: list[dict[str, None]] = [{} for _ in nodes]
    for i, node in enumerate(nodes):
        for name in node.input:
            j = producer.get(name)
            if j is None:
                continue
            up = scopes.get(nodes[j].name, "")
            if up and not _TOP_LEVEL.fullmatch(up):
                sources[i][up.partition(" (")[0].split(".")[0]] = None
            else:
                sources[i].update(sources[j])
    # Backward pass: the graph outputs each node feeds.
    feeds: list[set[str]] = [set() for _ in nodes]
    for i in range(len(nodes) - 1, -1, -1):
        for name in nodes[i].output:
            if name in outputs:
                feeds[i].add(name)
        for name in nodes[i].input:
            j = producer.get(name)
            if j is not None:
                feeds[j] |= feeds[i]
    first_seen: dict[str, int] = {}  # module -> index of its first node: sources in graph order
    for i, node in enumerate(nodes):
        module = scopes.get(node.name, "").partition(" (")[0].split(".")[0]
        first_seen.setdefault(module, i)
    labelled = dict(scopes)
    for i, node in enumerate(nodes):
        top = _TOP_LEVEL.fullmatch(scopes.get(node.name, ""))
        if top is None:
            continue
        came = ", ".join(sorted(sources[i], key=lambda m: first_seen.get(m, 0)))
        fed = _outputs_label([o for o in outputs if o in feeds[i]], outputs)
        labelled[node.name] = f"{top.group(1)}.forward: {came + ' ' if came else ''}-> {fed}"
    return labelled


def _outputs_label(fed: list[str], outputs: list[str]) -> str:
    """``fed`` (graph outputs, in order) with every complete family written once: all four ``inst_…``
    outputs of PanopticFCN as ``inst_*``."""
    if not fed:
        return "no output"
    parts: list[str] = []
    for name in fed:
        family = name.split("_", 1)[0] + "_"
        members = [o for o in outputs if o.startswith(family)]
        if "_" in name and len(members) > 1 and all(m in fed for m in members):
            if f"{family}*" not in parts:
                parts.append(f"{family}*")
        else:
            parts.append(name)
    return ", ".join(parts)


def carry_module_scopes(source: onnx.ModelProto, target: onnx.ModelProto) -> int:
    """Write the module scope of every ``target`` node that ``source`` (the model before simplification)
    knows by the same name into that node (:data:`NODE_SCOPE_KEY`) and into ``target``'s
    :data:`MODEL_SCOPES_KEY` map; returns how many nodes got one. Nodes the simplifier created have no
    scope."""
    import onnx

    known = module_scopes(source)
    carried: dict[str, str] = {}
    for node in target.graph.node:
        scope = known.get(node.name)
        if scope is None:
            continue
        carried[node.name] = scope
        kept = [p for p in node.metadata_props if p.key != NODE_SCOPE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        node.metadata_props.append(onnx.StringStringEntryProto(key=NODE_SCOPE_KEY, value=scope))
    props = {p.key: p.value for p in target.metadata_props if p.key != MODEL_SCOPES_KEY}
    props[MODEL_SCOPES_KEY] = json.dumps(carried, sort_keys=True, separators=(",", ":"))
    onnx.helper.set_model_props(target, props)
    return len(carried)
