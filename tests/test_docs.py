"""The documentation says only what works: every command in README.md, docs/*.md and the
programs' --help parses with its program's own parser (the program exists, every flag exists,
every value is accepted), and every relative link and repository path they name exists."""
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("train", "analyze", "ablation", "benchmark", "benchmark_data", "make_assignment")
# `python X.py ...` or `torchrun ... X.py ...`, up to the end of the line, a closing backtick,
# a table cell's bar or a comment
COMMAND = re.compile(r"(?:python3? |torchrun [^`\n|#]*?)((?:" + "|".join(PROGRAMS)
                     + r")\.py)\b([^`\n|#]*)")
PLACEHOLDERS = {"S": "0", "s": "0"}  # a seed in a command run per seed (S = 0..4)
LINK = re.compile(r"\]\(([^)\s]+)\)")
# `a/b.py`-like names in backticks whose first part is one of the repository's folders
TRACKED = ("inputs", "util", "plotting", "tests", "docs", ".ci")
CODE_PATH = re.compile(r"`((?:" + "|".join(re.escape(t) for t in TRACKED) + r")/[\w./-]+)`")


def code(text: str) -> list:
    """The code in a markdown text: each line of a fenced block (a command continued with a
    backslash joined), each inline `span` (wrapped over lines or not)."""
    pieces = []
    for k, part in enumerate(text.split("```")):
        if k % 2:  # inside a fence
            pieces += part.replace("\\\n", " ").splitlines()
        else:
            pieces += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", part)]
    return pieces


def commands() -> list:
    """(where, program, argv) of every command in the docs' code and the programs' --help."""
    sources = [(doc.name, code(doc.read_text())) for doc in DOCS]
    for program in PROGRAMS:  # the examples at the top of each program's docstring (its --help)
        tree = ast.parse((ROOT / f"{program}.py").read_text())
        sources.append((f"{program}.py --help", ast.get_docstring(tree).splitlines()))
    found = []
    for where, pieces in sources:
        for piece in pieces:
            for m in COMMAND.finditer(piece):
                argv = [PLACEHOLDERS.get(a, a) for a in shlex.split(m.group(2)) if a != "..."]
                found.append((where, m.group(1)[:-3], argv))
    return found


def parse(program: str, argv: list) -> None:
    """The program's own parse_args on argv: argparse's SystemExit if it refuses them."""
    if program == "ablation":
        import train
        args, forwarded = importlib.import_module("ablation").parse_args(argv)
        train.parse_args(forwarded + ["--method", "vit"])  # what ablation.py gives each row
        return
    importlib.import_module(program).parse_args(argv)


def test_the_docs_hold_commands_of_every_program():
    named = {program for _, program, _ in commands()}
    assert {"train", "analyze", "ablation", "benchmark", "make_assignment"} <= named


@pytest.mark.parametrize("doc,program,argv", commands(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_documented_command_parses(doc, program, argv, monkeypatch, tmp_path, capsys):
    # judged as on a machine with 8 GPUs (the docs' GPU commands are not refused for lack of one)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    if program == "make_assignment":  # --out ../course must be new and outside the repository
        fake_root = tmp_path / "repo"
        fake_root.mkdir()
        monkeypatch.setattr(importlib.import_module("make_assignment"), "ROOT", fake_root)
        monkeypatch.chdir(fake_root)
    try:
        parse(program, argv)
    except SystemExit as refused:
        if refused.code == 0:  # --help
            return
        error = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{doc}: python {program}.py {' '.join(argv)} is refused: "
                    f"{error[-1] if error else refused.code}")


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_relative_link_and_repository_path_exists(doc):
    text = doc.read_text()
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same page
        path = target.split("#")[0]
        if not (doc.parent / path).exists():
            missing.append(f"link {target}")
    for path in CODE_PATH.findall(text):
        if not (ROOT / path.rstrip("/.")).exists():
            missing.append(f"path {path}")
    assert not missing, f"{doc.name} names what does not exist: {', '.join(missing)}"
