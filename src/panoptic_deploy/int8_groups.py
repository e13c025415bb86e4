"""Groups of quantized nodes by model module, and an INT8 model with some of them unquantized in place.

The sensitivity search (:mod:`panoptic_deploy.int8_search`) asks "how much of the loss goes away when this
module runs unquantized?" for many modules. Re-quantizing with ModelOpt for every question costs ~15 s on
the demo; :func:`unquantize_nodes` answers it in a fraction of a second by editing the INT8 model itself:
each named node reads, instead of a DequantizeLinear(QuantizeLinear(x)), the ``x`` that was quantized (an
activation or an FP32 weight), and Q/DQ nodes left without readers are dropped. That is what
``int8.exclude_nodes`` asks ModelOpt for; the search confirms its final choice with a real
:func:`precision.quantize_int8` run.

:func:`quantized_groups` groups the nodes that read a DequantizeLinear by their module scope
(:mod:`panoptic_deploy.onnx_scopes`): ``backbone``, ``backbone.bottom_up``, ``backbone.bottom_up.res2``, …
down to single nodes, so the search can exclude a whole module where that is what helps, and one node
where one node is enough: each module's children are its sub-modules, and the nodes directly in it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class NodeGroup:
    """The quantized nodes under one module scope, or a single node (``node`` set)."""

    parts: tuple[str, ...]  # ("backbone", "bottom_up", "res2"), or ("PanopticFCN.forward", label)
    nodes: tuple[str, ...]  # node names, in graph order
    node: bool = False  # a single node, below its innermost module

    @property
    def name(self) -> str:
        """``backbone.bottom_up.res2``; a top-level op's label as is; one node as ``<module> / <node>``."""
        if self.node:
            return f"{NodeGroup(self.parts[:-1], self.nodes).name} / {self.nodes[0]}"
        return self.parts[-1] if ":" in self.parts[-1] else ".".join(self.parts)


def scope_parts(scope: str) -> tuple[str, ...]:
    """The module hierarchy of a scope label: ``"backbone.res2.0 (BottleneckBlock)"`` -> ``("backbone",
    "res2", "0")``; a top-level op's ``"PanopticFCN.forward: … -> …"`` -> ``("PanopticFCN.forward",
    label)``; a legacy ``a/b`` scope -> ``("a", "b")``."""
    if ":" in scope:
        return (scope.partition(":")[0], scope)
    path = scope.partition(" (")[0]
    return tuple(p for p in re.split(r"[./]", path) if p) or (scope,)


def quantized_nodes(int8: onnx.ModelProto) -> list[str]:
    """Names of the nodes that read a DequantizeLinear output (the quantized ops), in graph order."""
    dq_outputs = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        str(n.name)
        for n in int8.graph.node
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)
    ]


def quantized_groups(int8: onnx.ModelProto, scopes: Mapping[str, str]) -> list[NodeGroup]:
    """Every module scope prefix of the quantized nodes with the quantized nodes under it (graph order),
    then each quantized node alone; nodes without a scope are under ``("(no module)",)``."""
    members: dict[tuple[str, ...], list[str]] = {}
    singles = []
    for name in quantized_nodes(int8):
        parts = scope_parts(scopes[name]) if name in scopes else ("(no module)",)
        for depth in range(1, len(parts) + 1):
            members.setdefault(parts[:depth], []).append(name)
        singles.append(NodeGroup((*parts, name), (name,), node=True))
    return [NodeGroup(parts, tuple(nodes)) for parts, nodes in members.items()] + singles


def children(group: NodeGroup, groups: Collection[NodeGroup]) -> list[NodeGroup]:
    """The groups one level below ``group``: its direct sub-modules, and its nodes that lie in no
    sub-module (a module with one node has that node as its only child)."""
    depth = len(group.parts)
    below = [g for g in groups if len(g.parts) == depth + 1 and g.parts[:depth] == group.parts]
    if len(below) == 1 and below[0].nodes == group.nodes and not below[0].node:
        return children(below[0], groups)  # a chain of one-child modules: skip to where it branches
    return below


def unquantize_nodes(int8: onnx.ModelProto, nodes: Collection[str]) -> onnx.ModelProto:
    """A copy of ``int8`` in which every node named in ``nodes`` reads its inputs unquantized: an input
    produced by DequantizeLinear(QuantizeLinear(x)) is rewired to ``x``; Q/DQ nodes left without readers
    are removed. Other readers of the same Q/DQ keep it. Names not in the model are ignored."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(int8)
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    wanted = set(nodes)

    def quantized_source(tensor: str) -> str | None:
        dq = producers.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = producers.get(dq.input[0])
        return str(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None

    for node in graph.node:
        if node.name not in wanted:
            continue
        for slot, tensor in enumerate(node.input):
            source = quantized_source(tensor)
            if source is not None:
                node.input[slot] = source
    _drop_unread_qdq(graph)
    read = {i for n in graph.node for i in n.input}
    # ORT warns about every initializer no node reads (the dropped pairs' scales and zero points).
    unused = [init for init in graph.initializer if init.name not in read]
    for init in unused:
        graph.initializer.remove(init)
    return model


def _drop_unread_qdq(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes none of whose outputs is read (repeatedly: a DQ gone leaves its Q unread)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in n.output)
        ]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)
