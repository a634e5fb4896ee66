"""Damaged and forged model directories (issue 32, class 5): whatever a file holds, once its sha256 is
rewritten to match, predict, evaluate and info give one `Error:` line naming the file (exit 1), or work.
The directory is checked as a whole when it is loaded (lstm_cli.schema), whichever engine serves it."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
from _forge import forge, invoke, npy_header, one_error, zip_bytes


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


# (file edited, edit, file named in the error, what the error says)
CASES = {
    "engine config of the wrong type": ("engine_json", _dense_bias_string, "engine.json", "use_bias"),
    "reference to a missing tensor": ("engine_json", _missing_tensor, "engine.json", "no_such_layer"),
    "number in the vocabulary": ("vocabulary_json", _vocabulary_number, "vocabulary.json", "strings"),
    "npz member that is not an array": ("engine_npz", _member_not_an_array, "engine.npz", "dense/kernel"),
    "more labels than outputs": ("metadata_json", _more_labels, "engine.npz", "4 labels"),
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
