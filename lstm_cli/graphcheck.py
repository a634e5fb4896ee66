"""Which TensorFlow ops a SavedModel's serving signature can run, and refusing the ones lstm-cli never exports.

A SavedModel runs no Python when loaded, but its graph is a program: ops that read or write files, call
Python or print could be planted in a model directory. Before loading, the ops reachable from the
serving signature are listed from saved_model.pb (parsed as data) and checked against the ops
lstm-cli's own exports use."""

from __future__ import annotations

from pathlib import Path

from lstm_cli.errors import ArtifactError

# Every op reachable from the serving signature of models lstm-cli exports (LSTM and GRU, stacked,
# bidirectional, with or without the Dense layer), plus their stateless/partitioned twins; none reads or
# writes files, calls Python or prints. tests/test_robustness.py checks every variant stays within it.
ALLOWED_OPS = frozenset(
    {
        "AddV2",
        "All",
        "ArgMax",
        "Assert",
        "AssignVariableOp",
        "BiasAdd",
        "Cast",
        "ConcatV2",
        "Const",
        "Cumsum",
        "DenseBincount",
        "Equal",
        "ExpandDims",
        "Fill",
        "FloorMod",
        "GatherV2",
        "Greater",
        "GreaterEqual",
        "HashTableV2",
        "Identity",
        "If",
        "Less",
        "LessEqual",
        "LogicalAnd",
        "LookupTableFindV2",
        "MatMul",
        "Max",
        "Maximum",
        "Minimum",
        "Mul",
        "NoOp",
        "NotEqual",
        "OnesLike",
        "Pack",
        "PartitionedCall",
        "Placeholder",
        "RaggedGather",
        "RaggedRange",
        "RaggedTensorToTensor",
        "Range",
        "RealDiv",
        "ReadVariableOp",
        "Relu",
        "Reshape",
        "ReverseV2",
        "Select",
        "SelectV2",
        "Shape",
        "Sigmoid",
        "Size",
        "Softmax",
        "Split",
        "Squeeze",
        "StatefulPartitionedCall",
        "StatelessIf",
        "StatelessRandomGetKeyCounter",
        "StatelessRandomUniformV2",
        "StatelessWhile",
        "StaticRegexReplace",
        "StridedSlice",
        "StringLower",
        "StringSplitV2",
        "Sub",
        "Sum",
        "Tanh",
        "TensorListFromTensor",
        "TensorListGetItem",
        "TensorListLength",
        "TensorListReserve",
        "TensorListSetItem",
        "TensorListStack",
        "Tile",
        "Transpose",
        "Unpack",
        "VarHandleOp",
        "While",
        "ZerosLike",
    }
)


def serving_ops(saved_model_pb: bytes, signature: str) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(saved_model_pb)
    graph = saved.meta_graphs[0].graph_def
    if signature not in saved.meta_graphs[0].signature_def:
        raise ArtifactError(f"no {signature!r} signature")
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    outputs = saved.meta_graphs[0].signature_def[signature].outputs.values()
    pending = [t.name.split(":")[0] for t in outputs]
    seen_nodes, seen_functions, ops = set(), set(), set()

    def visit(node_def) -> None:
        ops.add(node_def.op)
        for value in node_def.attr.values():
            names = [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
            for name in names:
                if name and name not in seen_functions and name in functions:
                    seen_functions.add(name)
                    for inner in functions[name].node_def:
                        visit(inner)
        if node_def.op in functions and node_def.op not in seen_functions:  # a function called as an op
            seen_functions.add(node_def.op)
            for inner in functions[node_def.op].node_def:
                visit(inner)

    while pending:
        name = pending.pop()
        if name in seen_nodes or name not in nodes:
            continue
        seen_nodes.add(name)
        visit(nodes[name])
        pending.extend(i.lstrip("^").split(":")[0] for i in nodes[name].input)
    return ops


def check_serving_graph(path: Path, signature: str) -> None:
    """Refuse a SavedModel whose serving signature uses ops lstm-cli never exports."""
    try:
        ops = serving_ops(path.read_bytes(), signature)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
    except Exception as e:  # a protobuf that does not parse
        raise ArtifactError(f"{path}: not a readable SavedModel ({type(e).__name__})") from None
    unexpected = sorted(ops - ALLOWED_OPS)
    if unexpected:
        raise ArtifactError(
            f"{path}: the serving graph uses operations lstm-cli never exports ({', '.join(unexpected[:5])}); "
            "refusing to run it"
        )
