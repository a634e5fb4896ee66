"""`lstm_cli.load`: the command line's numbers from Python, on the numpy engine, without TensorFlow; and the
example in docs/python.md runs as printed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lstm_cli
from lstm_cli.cli import app
from lstm_cli.errors import ArtifactError, LstmCliError, UsageError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["good great lovely", "", "bad awful", "Café ÉTÉ 🙂 [red]x[/red]", "okay plain " * 50, "line\nbreak\ttab"]


def _run(script: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out


def test_importing_lstm_cli_loads_nothing_heavy():
    out = _run("""
        import sys
        import lstm_cli
        assert callable(lstm_cli.load)
        print(sorted(m for m in ("numpy", "lstm_cli.api", "lstm_cli.engine", "typer") if m in sys.modules))
    """)
    assert out.stdout.strip() == "[]"


def test_predict_proba_runs_without_tensorflow_and_equals_the_command_lines_probabilities(trained_model):
    out = _run(f"""
        import json, sys
        import lstm_cli
        model = lstm_cli.load({str(trained_model)!r})
        probabilities = model.predict_proba({TEXTS!r})
        assert probabilities.dtype.name == "float32" and probabilities.shape == ({len(TEXTS)}, len(model.labels))
        print(json.dumps({{"labels": model.labels, "engine": model.engine, "p": probabilities.tolist(),
                          "heavy": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}}))
    """)
    api = json.loads(out.stdout)
    assert api["heavy"] == [] and api["engine"] == "numpy"
    # the command line reads one text a line: each text goes in as an argument
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--format", "json", "--all-probabilities",
                                 *TEXTS])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(TEXTS)
    cli = [[record["probabilities"][label] for label in api["labels"]] for record in records]
    np.testing.assert_allclose(np.array(api["p"]), np.array(cli), rtol=1e-6, atol=1e-7)
    assert [r["label"] for r in records] == [api["labels"][int(np.argmax(p))] for p in api["p"]]


@pytest.fixture(scope="module")
def model(trained_model):
    with lstm_cli.load(trained_model) as model:
        yield model


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_predict_gives_the_k_most_probable_labels_as_named_records(model, k):
    probabilities = model.predict_proba(TEXTS)
    predictions = model.predict(TEXTS, k=k)
    assert len(predictions) == len(TEXTS)
    for row, records in zip(probabilities, predictions, strict=True):
        assert len(records) == min(k, len(model.labels))
        label, probability = records[0]  # a tuple too
        assert label == model.labels[int(row.argmax())] and probability == float(row.max())
        assert [r.probability for r in records] == sorted((float(p) for p in row), reverse=True)[: len(records)]
        assert all(r.probability == float(row[model.labels.index(r.label)]) for r in records)
    assert model.predict([], k=k) == [] and model.predict_proba([]).shape == (0, len(model.labels))


def test_explain_is_the_command_lines_explanation(model, trained_model):
    text = "good great, but the service was awful"
    for label, unit in [(None, "log-odds"), ("neg", "probability")]:
        explanation = model.explain(text, label=label, unit=unit)
        args = ["explain", "-m", str(trained_model), "--format", "json", "--unit", unit, text]
        record = json.loads(runner.invoke(app, args + (["--label", label] if label else [])).stdout)
        ours = explanation.to_dict()
        # the command line prints the digits float32 carries; and the engine's cache of token projections, filled
        # by earlier texts in other batches, can move a probability by a float32 ulp
        scores = [t.pop("score") for t in ours["tokens"]], [t.pop("score") for t in record["tokens"]]
        np.testing.assert_allclose(*scores, rtol=1e-5, atol=1e-6)
        assert ours.pop("probability") == pytest.approx(record.pop("probability"), abs=1e-6)
        assert ours == record and ours["unit"] == unit and ours["label"] == (label or ours["predicted"])


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.predict("good"), TypeError, "not a single str: pass [text]"),
        (lambda m: m.predict_proba(["good", b"bad"]), TypeError, "texts[1] is not a str but bytes"),
        (lambda m: m.predict(["good"], k=0), UsageError, "k must be at least 1"),
        (lambda m: m.predict(["good"], k=1.5), TypeError, "k must be an int"),
        (lambda m: m.explain(["good"]), TypeError, "text must be a str"),
        (lambda m: m.explain("good", label="nope"), UsageError, "'nope' is not one of the model's labels"),
        (lambda m: m.explain("good", unit="odds"), UsageError, "unit must be one of log-odds, probability"),
    ],
)
def test_misuse_raises_a_typed_error_that_names_the_fix(model, call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(model)


def test_a_missing_model_and_a_bad_engine_raise_lstm_cli_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no model here"):
        lstm_cli.load(tmp_path / "nothing")
    with pytest.raises(UsageError, match="engine must be one of"):
        lstm_cli.load(tmp_path, engine="torch")
    assert issubclass(ArtifactError, LstmCliError) and issubclass(UsageError, LstmCliError)


def test_a_model_without_engine_files_is_refused_unless_tensorflow_may_serve_it(trained_model, tmp_path):
    old = tmp_path / "old-model"
    shutil.copytree(trained_model, old)
    meta = json.loads((old / "metadata.json").read_text(encoding="utf-8"))
    for name in ("engine.json", "engine.npz"):  # engine.npz: in directories saved when the engine read it
        if name in meta["files"]:
            (old / name).unlink()
            del meta["files"][name]
    del meta["engine"]
    (old / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ArtifactError, match="older lstm-cli.*engine='auto'") as refused:
        lstm_cli.load(old)
    assert "--engine" not in str(refused.value)
    with lstm_cli.load(old, engine="auto") as served, lstm_cli.load(trained_model) as fast:
        assert served.engine == "tensorflow"
        np.testing.assert_allclose(served.predict_proba(TEXTS[:3]), fast.predict_proba(TEXTS[:3]), atol=1e-5)


def _python_examples(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def test_the_documented_example_runs_as_printed(trained_model, tmp_path):
    examples = [code for code in _python_examples(ROOT / "docs" / "python.md") if "lstm_cli.load" in code]
    assert examples, "docs/python.md has no lstm_cli.load example"
    shutil.copytree(trained_model, tmp_path / "lstm-model")  # the example's model: the default directory
    for code in examples:
        out = _run(code + "\nimport sys\nassert 'tensorflow' not in sys.modules\n", cwd=tmp_path)
        assert out.stdout.strip() and out.stderr == ""
