"""Which TensorFlow ops a SavedModel may contain, checked before anything of it is loaded.

A SavedModel runs no Python when loaded, but its graph is a program, and loading runs part of it
(resource creators and initializers, restore functions). Ops that read or write files, call Python or
print could be planted in a model directory. So before loading, saved_model.pb is parsed as data and
every node of every graph and every function in its library is checked: each op must be one that
lstm-cli's own exports use. The only file-touching ops among them (the checkpoint ops SaveV2,
MergeV2Checkpoints, RestoreV2) are allowed only inside the save and restore functions that the
SavedModel's saver_def names, and only if nothing else in the model can call those functions;
tf.saved_model.load never runs them (it restores variables with its own code)."""

from __future__ import annotations

from pathlib import Path

from lstm_cli.errors import ArtifactError
from lstm_cli.owned import read_regular

# Every op in the graphs and function libraries of the models lstm-cli exports (LSTM and GRU, stacked,
# bidirectional, with or without the Dense layer), plus their stateless/partitioned twins; none reads or
# writes files, calls Python or prints. tests/test_robustness.py checks every variant stays within it.
ALLOWED_OPS = frozenset(
    {
        "Add",
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
        "DisableCopyOnRead",
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
        "LookupTableExportV2",
        "LookupTableFindV2",
        "LookupTableImportV2",
        "LowerBound",  # BigramVocabulary: searchsorted over the kept bigram buckets
        "MatMul",
        "Max",
        "Maximum",
        "Minimum",
        "Mul",
        "MutableHashTableV2",
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
        "ShardedFilename",
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
        "StaticRegexFullMatch",
        "StaticRegexReplace",
        "StridedSlice",
        "StringJoin",
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
        "VarIsInitializedOp",
        "While",
        "ZerosLike",
    }
)
# Checkpoint file I/O, allowed only in the saver's own functions: (op, the saver_def field naming the
# node whose functions may use it).
SAVER_OPS = {"SaveV2": "save", "MergeV2Checkpoints": "save", "RestoreV2": "restore"}


def _called(node_def, functions: dict) -> set[str]:
    """Names of the library functions a node calls: as its op, or through function-valued attributes."""
    names = {node_def.op}
    pending = list(node_def.attr.values())
    while pending:
        value = pending.pop()
        for func in [value.func] if value.HasField("func") else value.list.func:
            names.add(func.name)
            pending.extend(func.attr.values())
    return names & functions.keys()


def _closure(roots: set[str], calls: dict[str, set[str]]) -> set[str]:
    seen, pending = set(), list(roots)
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(calls[name])
    return seen


def _meta_graph_problems(meta_graph) -> tuple[set[str], list[str]]:
    graph = meta_graph.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    calls = {name: set().union(*(_called(n, functions) for n in f.node_def)) for name, f in functions.items()}
    saver = {
        "save": meta_graph.saver_def.save_tensor_name.split(":")[0],
        "restore": meta_graph.saver_def.restore_op_name.split(":")[0],
    }
    # Functions the saver's two nodes call, and those anything else can call (loading calls some of these).
    roots = {"save": set(), "restore": set(), "other": set(meta_graph.object_graph_def.concrete_functions)}
    ops, problems = set(), []
    for node in graph.node:
        role = next((r for r, name in saver.items() if name and node.name == name), "other")
        roots[role] |= _called(node, functions)
        ops.add(node.op)
        if node.op in SAVER_OPS:
            problems.append(f"{node.op} outside the saver's functions")
    reach = {role: _closure(names, calls) for role, names in roots.items()}
    for name, function in functions.items():
        for op in {n.op for n in function.node_def}:
            ops.add(op)
            role = SAVER_OPS.get(op)
            # Only reachable from its own saver node: never from the other one, or from anything else.
            if role and any((name in found) != (other == role) for other, found in reach.items()):
                problems.append(f"{op} outside the saver's functions")
    return ops, problems


def graph_problems(saved_model_pb: bytes, signature: str) -> tuple[set[str], list[str]]:
    """(every op in the SavedModel, what is wrong with it); no problems means it may be loaded.

    Function calls count as ops too, so a function reached as an op must be on the list (none is)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(saved_model_pb)
    if not saved.meta_graphs or signature not in saved.meta_graphs[0].signature_def:
        return set(), [f"no {signature!r} signature"]
    ops, problems = set(), []
    for meta_graph in saved.meta_graphs:
        graph_ops, graph_problems_found = _meta_graph_problems(meta_graph)
        ops |= graph_ops
        problems += graph_problems_found
    unknown = sorted(ops - ALLOWED_OPS - SAVER_OPS.keys())
    if unknown:
        problems.insert(0, f"operations lstm-cli never exports ({', '.join(unknown[:5])})")
    return ops, list(dict.fromkeys(problems))


def check_saved_model(path: Path, signature: str) -> None:
    """Refuse a SavedModel that uses ops lstm-cli never exports, or checkpoint I/O outside its saver."""
    try:
        _, problems = graph_problems(read_regular(path), signature)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:  # a protobuf that does not parse
        raise ArtifactError(f"{path}: not a readable SavedModel ({type(e).__name__})") from None
    if problems:
        raise ArtifactError(f"{path}: {'; '.join(problems)}; refusing to load it")
