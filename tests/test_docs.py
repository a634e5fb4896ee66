"""The README is a short front door whose links land, CI runs exactly its test command, and no prose block
in the README, docs/ or CHANGELOG.md runs long. (mkdocs build --strict checks the links inside docs/.)"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LONGEST_RUN = 15  # lines of one paragraph or list without a blank line
PROSE = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def slugify(heading: str) -> str:
    """A heading's anchor as Python-Markdown's toc extension (which MkDocs uses) makes it."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(markdown: Path) -> set[str]:
    found, fence = set(), False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6}\s+(.*?)\s*#*$", line)):
            found.add(slugify(m.group(1)))
    return found


def longest_run(markdown: Path) -> tuple[int, int]:
    """(length, first line) of the longest run of non-blank lines outside code fences and tables."""
    best, run, start, fence = (0, 0), 0, 0, False
    for number, line in enumerate(markdown.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence, run = not fence, 0
            continue
        if fence or not stripped or stripped.startswith("|"):
            run = 0
            continue
        start = number if run == 0 else start
        run += 1
        best = max(best, (run, start))
    return best


def test_the_readme_is_a_front_door_of_at_most_300_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


def test_every_relative_link_in_the_readme_lands_on_a_file_and_heading():
    text = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert len(links) >= 10  # the parser found the links; the README points into the docs
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path) if path else README
        assert target.exists(), f"README links to {link}: no such file"
        if anchor:
            assert anchor in anchors(target), f"README links to {link}: no such heading in {path}"


def test_the_three_first_hour_questions_are_answered_from_the_readme():
    text = README.read_text(encoding="utf-8").lower()
    for question in ("how do i pass a tab?", "can i predict a csv?", "is there a python api?"):
        assert question in text, question


def test_ci_runs_exactly_the_readmes_test_command():
    readme_commands = re.findall(r"^python3 -m venv .*$", README.read_text(encoding="utf-8"), flags=re.M)
    test_command = [c for c in readme_commands if "pytest" in c]
    assert len(test_command) == 1, readme_commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == test_command[0]
    assert "python -m pytest" in ci and "mkdocs build --strict" in ci


@pytest.mark.parametrize("markdown", PROSE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paragraph_or_list_runs_longer_than_15_lines(markdown):
    length, start = longest_run(markdown)
    assert length <= LONGEST_RUN, f"{markdown.relative_to(ROOT)}:{start}: {length} lines without a break"


def test_the_checks_above_can_fail(tmp_path):
    long = tmp_path / "long.md"
    long.write_text("# Title `x`\n\n" + "- item\n" * 16 + "\n```\n" + "code\n" * 40 + "```\n", encoding="utf-8")
    assert longest_run(long) == (16, 3)
    assert anchors(long) == {"title-x"}
    assert slugify("Delimiters: tabs, semicolons, pipes") == "delimiters-tabs-semicolons-pipes"
    example = tmp_path / "example.md"
    example.write_text("```\n$ cat x | lstm-cli predict -m m --nope 'a --b' - | jq\nlstm-cli train \\\n  -q\n```\n")
    assert [c[:2] for c in _lstm_cli_calls(example)] == [("predict", ["-m", "--nope"]), ("train", ["-q"])]


@functools.cache
def _command_options() -> dict[str, set[str]]:
    import typer

    from lstm_cli.cli import app

    group = typer.main.get_command(app)
    return {
        name: {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for name, command in group.commands.items()
    }


def _lstm_cli_calls(markdown: Path) -> list[tuple[str, list[str], str]]:
    """(command, options, line) for every `lstm-cli COMMAND ...` in the code blocks of a page."""
    calls, fence = [], False
    text = markdown.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            continue
        unquoted = re.sub(r"\"[^\"]*\"|'[^']*'", '""', line)
        for command, rest in re.findall(r"\blstm-cli\s+([a-z][\w-]*)([^|&;)<>\n]*)", unquoted):
            calls.append((command, re.findall(r"(?<!\S)(--?[A-Za-z][\w-]*)", rest), line.strip()))
    return calls


def test_every_command_and_option_in_the_docs_examples_exists():
    options = _command_options()
    calls = [(page, *call) for page in PROSE for call in _lstm_cli_calls(page)]
    assert len(calls) > 30  # the parser found the examples
    for page, command, used, line in calls:
        where = f"{page.relative_to(ROOT)}: {line}"
        assert command in options, f"{where}: no command {command!r}"
        unknown = [o for o in used if o not in options[command]]
        assert not unknown, f"{where}: {command} has no option {unknown}"


def test_every_command_has_a_page_in_the_docs_nav_and_a_row_in_the_readme():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for command in _command_options():
        assert (ROOT / "docs" / "commands" / f"{command}.md").is_file(), f"no docs/commands/{command}.md"
        assert f"commands/{command}.md" in nav, f"docs/commands/{command}.md is not in mkdocs.yml's nav"
        assert f"(docs/commands/{command}.md)" in readme, f"the README's table of commands has no {command}"


def test_the_python_examples_in_the_docs_run(trained_model, tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/python.md runs as printed, from a directory holding `lstm-model`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python.md").read_text(encoding="utf-8"), re.S)
    assert blocks
    (tmp_path / "lstm-model").symlink_to(trained_model, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), {"__name__": "docs_example"})
        assert capsys.readouterr().out.strip(), f"this example printed nothing:\n{block}"
