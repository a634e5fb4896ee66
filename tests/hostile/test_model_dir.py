"""Damaged and forged model directories (issue 32, class 5): whatever a file holds, once its sha256 is
rewritten to match, predict, evaluate and info give one `Error:` line naming the file (exit 1), or work.
The directory is checked as a whole when it is loaded (lstm_cli.schema), whichever engine serves it."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _forge import forge, invoke, npy_header, one_error, zip_bytes
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st


def _first(nodes: list, kind: str) -> dict:
    return next(n for n in nodes if n["type"] == kind)


def _dense_bias_string(d):
    _first(d["network"]["nodes"], "Dense")["config"]["use_bias"] = "yes"


def _missing_tensor(d):
    _first(d["network"]["nodes"], "Dense")["args"] = [{"tensor": "no_such_layer", "index": 0}]


def _vocabulary_number(v):
    v[3] = 7


def _member_not_an_array(arrays):
    members = {f"{k}.npy": _npy(a) for k, a in arrays.items()}
    members["dense/kernel.npy"] = b"this is not an array"
    return zip_bytes(members)


def _npy(array) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _more_labels(m):
    m["labels"] = [*m["labels"], "extra"]


def _wrong_shape(arrays):
    arrays["dense/kernel"] = arrays["dense/kernel"][:-1]


def _missing_key(d):
    d["weights_keys"]["dense/kernel"] = "no/key"


def _elsewhere(d):
    d["weights_file"] = "../../etc/passwd"


def _keys_a_list(d):
    d["weights_keys"] = list(d["weights_keys"])


def _block_past_the_end(index: bytes) -> bytes:
    """The footer's handle of the index block pointing past the end of the file."""
    from lstm_cli.tensorbundle import _varint

    _, i = _varint(index, len(index) - 48)
    _, i = _varint(index, i)
    footer = index[len(index) - 48 : i] + bytes([0xFF, 0xFF, 0x7F, 0x10])
    return index[:-48] + footer + bytes(40 - len(footer)) + index[-8:]


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# (file edited, edit, file named in the error, what the error says)
CASES = {
    "engine config of the wrong type": ("engine_json", _dense_bias_string, "engine.json", "use_bias"),
    "reference to a missing tensor": ("engine_json", _missing_tensor, "engine.json", "no_such_layer"),
    "number in the vocabulary": ("vocabulary_json", _vocabulary_number, "vocabulary.json", "strings"),
    "npz member that is not an array": ("engine_npz", _member_not_an_array, "engine.npz", "dense/kernel"),
    "more labels than outputs": ("metadata_json", _more_labels, "variables.data-00000-of-00001", "4 labels"),
    "a weight's checkpoint key missing": ("engine_json", _missing_key, "variables.index", "no/key"),
    "weights read from elsewhere": ("engine_json", _elsewhere, "engine.json", "weights_file"),
    "weights keys not an object": ("engine_json", _keys_a_list, "engine.json", "weights_keys"),
    "a truncated checkpoint index": ("variables_index", lambda b: b[:-9], "variables.index", "no table footer"),
    "a block past the index's end": ("variables_index", _block_past_the_end, "variables.index", "past the file"),
    "a truncated checkpoint data file": ("variables_data", _half, "variables.index", "in a data file of"),
    "a kernel one row short": ("engine_npz", _wrong_shape, "engine.json", "does not run"),
    "engine.json not an object": ("engine_json", lambda d: [d], "engine.json", "must be an object"),
    "vocabulary shorter than the metadata says": ("vocabulary_json", lambda v: v[:-1], "vocabulary.json", "tokens"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_forged_file_is_one_error_naming_it(trained_model, data_dir, tmp_path, case):
    key, edit, named, says = CASES[case]
    model = forge(trained_model, tmp_path / "forged", **{key: edit})
    for args in (["predict", "-m", str(model), "--engine", "numpy", "good"],
                 ["evaluate", str(data_dir / "test.csv"), "-m", str(model), "--engine", "numpy"]):  # fmt: skip
        line = one_error(invoke(*args))
        assert named in line and says in line, line


@pytest.mark.parametrize(
    ("section", "value"),
    [("training", "x"), ("metrics", {"loss": "low"}), ("vectorizer", []), ("config", {"max_length": "long"})],
)
def test_info_names_a_metadata_section_of_the_wrong_type(trained_model, tmp_path, section, value):
    model = forge(trained_model, tmp_path / "forged", metadata_json=lambda m: m.update({section: value}))
    for args in (["info", "-m", str(model)], ["info", "-m", str(model), "--json"]):
        line = one_error(invoke(*args))
        assert "metadata.json" in line and section in line, line


def test_metadata_nested_thousands_deep_is_one_error(trained_model, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    model = forge(trained_model, tmp_path / "forged",
                  metadata_json=lambda m: json.dumps(m)[:-1] + f', "deep": {deep}}}')  # fmt: skip
    line = one_error(invoke("info", "-m", str(model)))
    assert "metadata.json" in line and "deep" in line, line


def test_more_labels_than_outputs_is_refused_by_the_tensorflow_engine_too(trained_model, tmp_path):
    model = forge(trained_model, tmp_path / "forged", metadata_json=_more_labels)
    line = one_error(invoke("predict", "-m", str(model), "--engine", "tensorflow", "good"))
    assert "metadata.json" in line and "4 labels" in line, line


def _run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """lstm-cli in a child process whose address space is capped at `limit` bytes."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "lstm_cli", *args], capture_output=True, text=True, timeout=120,
                          preexec_fn=cap)  # fmt: skip


@pytest.mark.parametrize("how", ["stored, header claims 1.5 GB", "deflated, inflates to 1.5 GB"])
def test_an_npz_member_claiming_gigabytes_is_refused_before_it_is_read(trained_model, tmp_path, how):
    def bomb(arrays):
        members = {f"{k}.npy": _npy(a) for k, a in arrays.items() if k != "embedding/embeddings"}
        if how.startswith("stored"):
            members["embedding/embeddings.npy"] = npy_header((375_000_000, 1)) + bytes(64)
            return zip_bytes(members)
        return zip_bytes(members, deflate_zeros={"embedding/embeddings.npy": 1430})

    model = forge(trained_model, tmp_path / "forged", engine_npz=bomb)
    assert (model / "engine.npz").stat().st_size < 4 << 20
    done = _run_limited(["predict", "-m", str(model), "--engine", "numpy", "good"], limit=1 << 30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "engine.npz" in lines[0], done.stderr
    assert "embedding/embeddings" in lines[0], lines[0]


# --- property: any mutation of any file, hashes rewritten -----------------------------------------------------

OTHER = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


def _mutate_json(value, data):
    """One change at a random place of a parsed JSON value: another type, nested, lengthened, shortened, removed."""
    box = [value]
    holder, key = box, 0
    while isinstance(holder[key], dict | list) and holder[key] and data.draw(st.integers(0, 3), "descend") > 0:
        node = holder[key]
        holder, key = node, data.draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
    old = holder[key]
    action = data.draw(st.sampled_from(["replace", "nest", "grow", "shrink", "delete"]), "action")
    if action == "delete" and holder is not box:
        del holder[key]
    elif action == "nest":
        holder[key] = data.draw(st.sampled_from([[old], {"value": old}, [old, old]]), "nesting")
    elif action == "grow" and isinstance(old, list | str | int | dict):
        many = data.draw(st.integers(1, 3), "times")
        holder[key] = {list: lambda: [*old, *(old[-1:] or [0])] * many, str: lambda: old * 3 + "x",
                       int: lambda: old * 1000 + 7, dict: lambda: {**old, "extra": many}}[type(old)]()  # fmt: skip
    elif action == "shrink" and isinstance(old, list | str | int | dict):
        holder[key] = {list: lambda: old[:-1], str: lambda: "", int: lambda: -old,
                       dict: lambda: dict(list(old.items())[1:])}[type(old)]()  # fmt: skip
    else:
        holder[key] = data.draw(OTHER, "value")
    return box[0]


def _mutate_npz(arrays: dict, data):
    names = sorted(arrays)
    action = data.draw(st.sampled_from(["swap", "reshape", "dtype", "delete", "extra", "not an array", "huge"]))
    name = data.draw(st.sampled_from(names), "member")
    array = arrays[name]
    if action == "swap":
        other = data.draw(st.sampled_from(names), "other")
        arrays[name], arrays[other] = arrays[other], array
    elif action == "reshape":
        changed = [array.reshape(-1), array.T, array[:-1], np.concatenate([array, array]), array[..., None]]
        arrays[name] = data.draw(st.sampled_from([*changed, np.zeros((0,), array.dtype)]), "shape")
    elif action == "dtype":
        kind = data.draw(st.sampled_from([np.float64, np.int32, np.float16, np.bool_, np.uint8]), "dtype")
        arrays[name] = array.astype(kind)
    elif action == "delete":
        del arrays[name]
    elif action == "extra":
        arrays["extra/kernel"] = np.ones((3, 3), np.float32)
    else:
        members = {f"{k}.npy": _npy(a) for k, a in arrays.items()}
        members[f"{name}.npy"] = b"not an array" if action == "not an array" else npy_header((1 << 40, 4))
        return zip_bytes(members)
    return arrays


def _mutate_bytes(raw: bytes, data) -> bytes:
    """One change at a random place of a binary file: a byte changed, bytes cut out or put in, the file cut short."""
    at = data.draw(st.integers(0, len(raw) - 1), "offset")
    action = data.draw(st.sampled_from(["byte", "cut", "insert", "truncate"]), "action")
    if action == "byte":
        return raw[:at] + bytes([data.draw(st.integers(0, 255), "byte")]) + raw[at + 1 :]
    if action == "cut":
        return raw[:at] + raw[at + data.draw(st.integers(1, 16), "length") :]
    if action == "insert":
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=16), "bytes") + raw[at:]
    return raw[:at]


def _vm_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmSize")).split()[1]) * 1024


@contextlib.contextmanager
def _bounded(seconds: int, extra_memory: int):
    """No hang (SIGALRM after `seconds`) and no allocation past `extra_memory` more bytes of address space."""

    def hang(signum, frame):
        raise TimeoutError(f"lstm-cli ran more than {seconds} s")

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    handler = signal.signal(signal.SIGALRM, hang)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + extra_memory, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, handler)


_tensorflow_runs = {"done": 0}


def _forged_model_keeps_its_contract(trained_model, data_dir, data, tensorflow_budget: int) -> None:
    files = ["metadata_json", "vocabulary_json", "engine_json", "engine_npz", "variables_index"]
    key = data.draw(st.sampled_from(files), "file")
    with tempfile.TemporaryDirectory() as tmp:
        edit = {"engine_npz": lambda a: _mutate_npz(a, data), "variables_index": lambda b: _mutate_bytes(b, data)}.get(
            key, lambda v: _mutate_json(v, data)
        )
        model = forge(trained_model, Path(tmp) / "m", **{key: edit})
        commands = {
            "predict": (["predict", "-m", str(model), "-"], 2),
            "evaluate": (["evaluate", str(data_dir / "test.csv"), "-m", str(model)], None),
        }
        with _bounded(60, 3 << 30):
            info = invoke("info", "-m", str(model))
            outcomes = {}
            for name, (args, _) in commands.items():
                outcomes[name] = invoke(*args, "--engine", "numpy", input="good great\nawful\n")
        event(f"{key}: predict exit {outcomes['predict'].exit_code}")  # --hypothesis-show-statistics
        for result in [info, *outcomes.values()]:
            if result.exit_code != 0:
                one_error(result)
        if outcomes["predict"].exit_code == 0:
            assert len(outcomes["predict"].stdout.splitlines()) == 2, outcomes["predict"].stdout
        if outcomes["predict"].exit_code == 0 and _tensorflow_runs["done"] >= tensorflow_budget:
            return  # the SavedModel's checks are slow: only the first passing mutations run them
        _tensorflow_runs["done"] += outcomes["predict"].exit_code == 0
        with _bounded(120, 4 << 30):
            for args, lines in commands.values():
                result = invoke(*args, "--engine", "tensorflow", input="good great\nawful\n")
                if result.exit_code != 0:
                    one_error(result)
                elif lines:
                    assert len(result.stdout.splitlines()) == lines, result.stdout


# No explain phase: it reruns every case (minutes with the TensorFlow engine).
PROPERTY = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])  # fmt: skip


@settings(PROPERTY, max_examples=20)
@given(data=st.data())
def test_any_forged_file_gives_results_or_one_error_line(trained_model, data_dir, data):
    _forged_model_keeps_its_contract(trained_model, data_dir, data, tensorflow_budget=1)


@pytest.mark.slow
@settings(PROPERTY, max_examples=400)
@given(data=st.data())
def test_any_forged_file_gives_results_or_one_error_line_many(trained_model, data_dir, data):
    _forged_model_keeps_its_contract(trained_model, data_dir, data, tensorflow_budget=40)
