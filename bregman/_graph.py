"""Graph surgery on ``torch.export`` programs: find layers, cut a program into body and head.

Every teacher becomes an ``ExportedProgram`` (registry models are exported with an example
batch and a dynamic batch dimension); its unlifted module (``program.module()``) is an
``torch.fx.GraphModule`` of ATen operators whose nodes carry ``meta["nn_module_stack"]``, from
which module paths such as ``"2"`` or ``"layer3.2"`` are recovered.

A *candidate layer* is a node computing a linear map or a normalisation (linear, conv,
batch/layer norm), a residual sum, or a pooling. Its *transfer* is the activation that is its
only consumer (ReLU, leaky ReLU, sigmoid, tanh, softmax / log-softmax), else the identity.
Cutting at layer ``n`` with transfer node ``u`` (``u = n`` for the identity):

- the body is every ancestor of ``n``; it returns ``n`` flattened to ``(B, d)``;
- the head is every node between ``u`` and the output; its input ``y = f(a)`` is un-flattened
  and stands in for ``u`` (for a log-softmax, ``log(y)`` stands in for it).

The cut is valid only if every head node reads the input solely through ``u``; otherwise a skip
connection crosses the cut and the layer is reported as not tappable.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten

# op kind of candidate layers
_LAYER_OPS: dict[Any, str] = {}
for _name, _kind in (
    ("linear", "linear"),
    ("addmm", "linear"),
    ("mm", "linear"),
    ("matmul", "linear"),
    ("conv1d", "conv"),
    ("conv2d", "conv"),
    ("conv3d", "conv"),
    ("convolution", "conv"),
    ("_convolution", "conv"),
    ("batch_norm", "batch_norm"),
    ("_native_batch_norm_legit_no_training", "batch_norm"),
    ("native_batch_norm", "batch_norm"),
    ("layer_norm", "layer_norm"),
    ("group_norm", "group_norm"),
    ("adaptive_avg_pool1d", "pool"),
    ("adaptive_avg_pool2d", "pool"),
    ("avg_pool2d", "pool"),
    ("max_pool2d", "pool"),
    ("max_pool2d_with_indices", "pool"),
):
    _packet = getattr(aten, _name, None)
    if _packet is not None:
        for _overload in _packet.overloads():
            _LAYER_OPS[getattr(_packet, _overload)] = _kind
_ADD_OPS = {aten.add.Tensor}
_MEAN_OPS = {aten.mean.dim}

# activation ops -> transfer name (params read from the node by _transfer_params)
_ACTIVATIONS: dict[Any, str] = {
    aten.relu.default: "relu",
    aten.leaky_relu.default: "leaky_relu",
    aten.sigmoid.default: "sigmoid",
    aten.tanh.default: "tanh",
    aten.softmax.int: "softmax",
    aten._softmax.default: "softmax",
    aten.log_softmax.int: "log_softmax",
    aten._log_softmax.default: "log_softmax",
    aten.gelu.default: "gelu",
    aten.silu.default: "silu",
    aten.mish.default: "mish",
    aten.hardswish.default: "hardswish",
}
# monotone activations with a convex potential that the transfer library does not implement
_UNSUPPORTED_ACTIVATIONS = {
    aten.elu.default: "elu",
    aten.selu.default: "selu",
    aten.celu.default: "celu",
    aten.softplus.default: "softplus",
    aten.hardtanh.default: "hardtanh",
    aten.hardsigmoid.default: "hardsigmoid",
    aten.relu6.default: "relu6",
    aten.log_sigmoid_forward.default: "logsigmoid",
    aten.prelu.default: "prelu",
    aten.rrelu.default: "rrelu",
}


class LayerError(ValueError):
    """The named layer does not exist or cannot be tapped; the message says which can."""


def export_module(module: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """Export ``module`` with a dynamic batch dimension (the example's batch is widened to 2)."""
    x = example_input
    if x.shape[0] < 2:  # a batch of 1 would be specialised
        x = x.expand(2, *x.shape[1:]).contiguous()
    was_training = module.training
    module.eval()
    try:
        return torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    finally:
        module.train(was_training)


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    value = list(stack.values())[-1]
    path = value[0] if isinstance(value, (tuple, list)) else str(value)
    return path.removeprefix("L__self__.").strip(".")


def _per_example_shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 1:
        return None
    dims = []
    for s in val.shape[1:]:
        if not isinstance(s, int):
            try:
                s = int(s)
            except (TypeError, ValueError):
                return None
        dims.append(s)
    return tuple(dims)


@dataclass
class CutPlan:
    """Where to cut: pre-activation node ``node``, transfer node ``act`` (None: identity)."""

    node: fx.Node
    act: fx.Node | None
    transfer_name: str
    transfer_params: dict[str, Any]
    log_output: bool  # the activation is a log-softmax: the head starts with log(y)


@dataclass
class Candidate:
    path: str
    node: fx.Node
    op: str
    module_type: str
    output_shape: tuple[int, ...]
    plan: CutPlan | None
    reason: str | None


class TeacherGraph:
    """The unlifted graph of an exported teacher, analysed once for listing and cutting."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.program = program
        self.gm: fx.GraphModule = program.module()
        nodes = list(self.gm.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise LayerError(f"the teacher graph takes {len(inputs)} inputs; exactly one input tensor is supported")
        self.input = inputs[0]
        out = [n for n in nodes if n.op == "output"][0]
        results = out.args[0]
        if isinstance(results, (tuple, list)):
            if len(results) != 1:
                raise LayerError(f"the teacher returns {len(results)} values; exactly one output tensor is supported")
            results = results[0]
        if not isinstance(results, fx.Node):
            raise LayerError("the teacher's output is not a tensor computed from its input")
        self.result: fx.Node = results
        self.order = {n: i for i, n in enumerate(nodes)}
        self.batch_nodes = self._find_batch_nodes(nodes)
        self.dep_x = self._descendants(self.input, stop=self.batch_nodes)
        self.to_output = self._ancestors(self.result)
        self.candidates = self._find_candidates()

    # --------------------------------------------------------------------------- traversal
    def _find_batch_nodes(self, nodes: list[fx.Node]) -> set[fx.Node]:
        """Symbolic-int nodes equal to the batch size: the head recomputes them as ``y.size(0)``."""
        val = self.input.meta.get("val")
        if not isinstance(val, torch.Tensor) or not isinstance(val.shape[0], torch.SymInt):
            return set()
        batch = val.shape[0].node.expr
        found = set()
        for n in nodes:
            v = n.meta.get("val")
            if isinstance(v, torch.SymInt) and v.node.expr == batch:
                found.add(n)
        return found

    @staticmethod
    def _descendants(start: fx.Node, stop: set[fx.Node] = frozenset()) -> set[fx.Node]:
        # the batch size is not data: nodes that only read it do not depend on the input's values
        seen = {start}
        stack = [start]
        while stack:
            for user in stack.pop().users:
                if user not in seen and user not in stop:
                    seen.add(user)
                    stack.append(user)
        return seen

    @staticmethod
    def _ancestors(start: fx.Node) -> set[fx.Node]:
        seen = {start}
        stack = [start]
        while stack:
            for arg in stack.pop().all_input_nodes:
                if arg not in seen:
                    seen.add(arg)
                    stack.append(arg)
        return seen

    # --------------------------------------------------------------------------- candidates
    def _op_kind(self, node: fx.Node) -> str | None:
        if node.op != "call_function" or node not in self.dep_x:
            return None
        if node.target in _LAYER_OPS:
            return _LAYER_OPS[node.target]
        if node.target is operator.getitem and node.args[1] == 0:
            src = node.args[0]
            if isinstance(src, fx.Node) and _LAYER_OPS.get(src.target) in ("batch_norm", "pool"):
                return _LAYER_OPS[src.target]
            return None
        if node.target in _ADD_OPS:
            data_inputs = [a for a in node.args[:2] if isinstance(a, fx.Node) and a in self.dep_x]
            return "add" if len(data_inputs) == 2 else None
        if node.target in _MEAN_OPS:
            return "pool"
        return None

    def _find_candidates(self) -> list[Candidate]:
        raw = []
        for node in self.gm.graph.nodes:
            kind = self._op_kind(node)
            if kind is None:
                continue
            if node.target in _LAYER_OPS and isinstance(node.meta.get("val"), (tuple, list)):
                continue  # tuple-valued op (batch norm with statistics): its getitem is the layer
            shape = _per_example_shape(node)
            if shape is None:
                continue
            raw.append((node, kind, shape))
        by_path: dict[str, int] = {}
        for node, _, _ in raw:
            path = _module_path(node)
            by_path[path] = by_path.get(path, 0) + 1
        out = []
        for node, kind, shape in raw:
            path = _module_path(node)
            if not path or by_path[path] > 1:
                path = node.name  # several layers in one module, or none: the graph node names it
            stack = node.meta.get("nn_module_stack") or {}
            mtype = ""
            if stack:
                value = list(stack.values())[-1]
                mtype = str(value[1]).rsplit(".", 1)[-1] if isinstance(value, (tuple, list)) else ""
            plan, reason = self._plan(node, shape)
            out.append(Candidate(path, node, kind, mtype, shape, plan, reason))
        return out

    def _plan(self, node: fx.Node, shape: tuple[int, ...]) -> tuple[CutPlan | None, str | None]:
        from bregman.transfers import get_transfer

        if node not in self.to_output:
            return None, "its output does not reach the teacher's output"
        users = [u for u in node.users if u.op != "output"]
        n_consumers = len(users) + (1 if node is self.result else 0)
        if n_consumers > 1:
            names = ", ".join(sorted(u.name for u in node.users))
            return None, (
                f"its output is used by {n_consumers} consumers ({names}): a tap must be the only way the rest "
                "of the network sees this layer; pick a neighbouring layer"
            )
        act = users[0] if users and users[0].target in _ACTIVATIONS else None
        if act is not None:
            name = _ACTIVATIONS[act.target]
            params: dict[str, Any] = {}
            if name == "leaky_relu":
                slope = act.args[1] if len(act.args) > 1 else act.kwargs.get("negative_slope", 0.01)
                params = {"negative_slope": float(slope)}
            log_output = name == "log_softmax"
            if name in ("softmax", "log_softmax"):
                dim = act.args[1] if len(act.args) > 1 else act.kwargs.get("dim", -1)
                if len(shape) != 1 or dim not in (-1, 1):
                    return None, (
                        f"its softmax runs over dim {dim} of a {len(shape) + 1}-d tensor, not over the features of "
                        "a flat (B, d) layer; pick a neighbouring layer"
                    )
                name = "softmax"
            try:
                get_transfer(name, **params)
            except ValueError as exc:  # NonMonotoneTransferError / UnknownTransferError
                return None, str(exc)
            plan = CutPlan(node, act, name, params, log_output)
        elif users and users[0].target in _UNSUPPORTED_ACTIVATIONS:
            act_name = _UNSUPPORTED_ACTIVATIONS[users[0].target]
            return None, (
                f"it is followed by {act_name}, which is not one of the supported transfer functions "
                "(identity, relu, leaky_relu, sigmoid, tanh, softmax); pick a neighbouring layer"
            )
        else:
            plan = CutPlan(node, None, "identity", {}, False)
        crossing = self._crossing(plan.act or node)
        if crossing is not None:
            where = _module_path(crossing)
            return None, (
                f"not a cut of the graph: the layers above also read {crossing.name!r}"
                + (f" (in {where!r})" if where else "")
                + ", e.g. a residual skip connection that bypasses this layer; tap the block's output instead"
            )
        return plan, None

    def _head_nodes(self, cut: fx.Node) -> set[fx.Node]:
        body = self._ancestors(cut)
        return {n for n in self.to_output & self.dep_x if n not in body}

    def _crossing(self, cut: fx.Node) -> fx.Node | None:
        """A node outside the head that the head reads and that depends on the input, if any."""
        head = self._head_nodes(cut)
        for n in sorted(head, key=self.order.__getitem__):
            for arg in n.all_input_nodes:
                if arg is not cut and arg in self.dep_x and arg not in head:
                    return arg
        return None

    # --------------------------------------------------------------------------- surgery
    def build_body(self, plan: CutPlan) -> fx.GraphModule:
        """x -> pre-activations of ``plan.node`` flattened to (B, d)."""
        graph = fx.Graph()
        x = graph.placeholder("x")
        env: dict[fx.Node, fx.Node] = {self.input: x}
        keep = self._ancestors(plan.node)
        for n in self.gm.graph.nodes:
            if n in keep and n not in env:
                env[n] = graph.node_copy(n, lambda a: env[a])
        a = env[plan.node]
        flat = graph.call_function(aten.flatten.using_ints, (a, 1)) if len(plan.node.meta["val"].shape) != 2 else a
        graph.output(flat)
        return self._module(graph)

    def build_head(self, plan: CutPlan) -> fx.GraphModule:
        """f(a) as (B, d) -> the teacher's output."""
        cut = plan.act or plan.node
        shape = _per_example_shape(plan.node)
        graph = fx.Graph()
        y = graph.placeholder("y")
        value = y
        if shape is not None and len(shape) != 1:
            value = graph.call_function(aten.unflatten.int, (y, 1, list(shape)))
        if plan.log_output:
            value = graph.call_function(aten.log.default, (value,))
        env: dict[fx.Node, fx.Node] = {cut: value}
        head = self._head_nodes(cut)
        batch_size: list[fx.Node] = []

        def materialize(n: fx.Node) -> fx.Node:
            # copies a head node or a constant (parameter access) it reads, in graph order
            if n in self.batch_nodes and n not in env:
                if not batch_size:
                    batch_size.append(graph.call_function(aten.sym_size.int, (y, 0)))
                env[n] = batch_size[0]
            if n not in env:
                for arg in n.all_input_nodes:
                    materialize(arg)
                env[n] = graph.node_copy(n, lambda a: env[a])
            return env[n]

        for n in sorted(head, key=self.order.__getitem__):
            materialize(n)
        graph.output(materialize(self.result))
        return self._module(graph)

    def _module(self, graph: fx.Graph) -> fx.GraphModule:
        graph.eliminate_dead_code()
        # own frozen copies of the weights: freezing them must not touch the teacher's module
        gm = detach_parameters(fx.GraphModule(self.gm, graph))
        return gm.eval()


def flat_dim(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def detach_parameters(gm: fx.GraphModule) -> fx.GraphModule:
    """Give ``gm`` its own frozen copies of its parameters and buffers."""
    for name, p in list(gm.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        mod = gm.get_submodule(owner) if owner else gm
        setattr(mod, leaf, nn.Parameter(p.detach().clone(), requires_grad=False))
    for name, b in list(gm.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        mod = gm.get_submodule(owner) if owner else gm
        mod.register_buffer(leaf, b.detach().clone())
    return gm

