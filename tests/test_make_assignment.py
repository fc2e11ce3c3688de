"""Tests for make_assignment.py: the blanks, its refusals, and the student copy's round trip.

The round trip runs the graded tests (pytest -m MARKER) in subprocesses: in the generated copy
they fail exactly for the blanked methods, and in this repository they all pass.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import make_assignment

ROOT = Path(__file__).resolve().parent.parent  # the repository
EVERY_MARKER = "step1 or step2 or step3 or step4 or vit_attention or vit_block"


def run_pytest(cwd: Path, marker: str) -> subprocess.CompletedProcess:
    """`pytest -m marker` in cwd, as a grader runs it (no cache written)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_student_copy_fails_exactly_the_blanked_steps(tmp_path):
    copy = tmp_path / "course"
    make_assignment.main(["--steps", "2", "--vit", "attention", "--out", str(copy)])
    # the copy holds the repository's files; step 2's body is its docstring and the stub
    assert (copy / "train.py").read_text() == (ROOT / "train.py").read_text()
    assert (copy / "pytest.ini").is_file() and not (copy / ".git").exists()
    source = (copy / "llb.py").read_text()
    assert "N_0 = Disconnect(A, N_emb) = A N_emb" in source  # the docstring stays
    assert "@ self.object_embed" not in source  # the answer is gone
    imported = subprocess.run([sys.executable, "-c", "import llb, vit"], cwd=copy,
                              capture_output=True, text=True, timeout=300)
    assert imported.returncode == 0, imported.stderr
    # the blanked methods fail their graded tests, saying what to do and how it is graded
    for marker in ("step2", "vit_attention"):
        result = run_pytest(copy, marker)
        assert result.returncode == 1, result.stdout  # 1: tests ran and failed
        assert "NotImplementedError: " in result.stdout
        assert f"check it with: pytest -m {marker}" in result.stdout
    # the others pass (rc 0 needs at least one test selected: 5 means none)
    result = run_pytest(copy, "step1 or step3 or step4 or vit_block")
    assert result.returncode == 0, result.stdout[-3000:]


# A student's Attention.forward that leaves Eqs. (6)-(7) to the fused kernel on both paths
FUSED_ONLY = """        B, N, D = z.shape
        q, k, v = self.qkv(z).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        sa = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(sa.transpose(1, 2).reshape(B, N, D))
"""


def test_the_attention_exercise_needs_the_written_out_form(tmp_path):
    copy = tmp_path / "course"
    make_assignment.main(["--vit", "attention", "--out", str(copy)])
    blank = make_assignment.VIT_PARTS["attention"]
    stub = "\n".join(make_assignment.stub(blank, " " * 8)) + "\n"
    source = (copy / "vit.py").read_text()
    assert "Write Eqs. (6)-(7) out for self.fused False" in source
    assert stub in source
    (copy / "vit.py").write_text(source.replace(stub, FUSED_ONLY))
    result = run_pytest(copy, "vit_attention")
    # the fused cases pass, every written-out one fails
    assert result.returncode == 1 and " passed" in result.stdout, result.stdout[-3000:]
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all("written_out" in line for line in failed), result.stdout[-3000:]
    assert "F.scaled_dot_product_attention was called" in result.stdout


def test_reference_passes_every_graded_test():
    result = run_pytest(ROOT, EVERY_MARKER)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_each_marker_selects_only_its_own_tests():
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
               "-m", "step2", "test_llb.py"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    selected = [line for line in result.stdout.splitlines() if "::" in line]
    assert selected and all("::test_step2_" in line for line in selected), result.stdout


SOURCE = '''import math


class Model:
    """A class."""

    def step(self, x):
        """Double x."""
        y = 2 * x  # the answer
        return y

    def other(self, x):
        return x + 1
'''


def test_blank_source_finds_the_method_by_name_and_keeps_the_rest():
    mine = make_assignment.Blank(file="toy.py", cls="Model", method="step", marker="step2",
                                 equation="y = 2 x", shapes="In: x. Out: y.")
    # moved by edits above it: found by name all the same
    for source in (SOURCE, "# a comment\nimport os\n\n" + SOURCE):
        blanked = make_assignment.blank_source(source, [mine])
        namespace = {}
        exec(compile(blanked, "toy.py", "exec"), namespace)
        model = namespace["Model"]()
        assert model.other(1) == 2  # untouched
        assert model.step.__doc__ == "Double x."
        assert "the answer" not in blanked
        with pytest.raises(NotImplementedError) as error:
            model.step(1)
        assert str(error.value) == make_assignment.message(mine)
        assert str(error.value).endswith("Implement Model.step in toy.py; check it with: "
                                         "pytest -m step2")
        assert all(len(line) <= 100 for line in blanked.splitlines())
    with pytest.raises(ValueError, match=r"toy\.py has no method Model\.missing"):
        make_assignment.blank_source(SOURCE, [make_assignment.Blank(
            file="toy.py", cls="Model", method="missing", marker="step2", equation="", shapes="")])


def test_every_blank_names_a_method_with_a_docstring():
    for blank in [*make_assignment.STEPS.values(), *make_assignment.VIT_PARTS.values()]:
        tree = ast.parse((ROOT / blank.file).read_text())
        assert ast.get_docstring(make_assignment.find_method(tree, blank)), blank


@pytest.mark.parametrize("argv, expected", [
    (["--steps", "2,5"], "unknown --steps 5; valid: 1, 2, 3, 4"),
    (["--vit", "mlp"], "unknown --vit mlp; valid: attention, block"),
    ([], "nothing to blank: give --steps (1,2,3,4) and/or --vit (attention,block)"),
])
def test_bad_names_are_refused_before_any_work(tmp_path, capsys, argv, expected):
    out = tmp_path / "course"
    with pytest.raises(SystemExit) as stop:
        make_assignment.main(argv + ["--out", str(out)])
    assert stop.value.code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_a_non_empty_out_dir_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        make_assignment.main(["--steps", "1", "--out", str(tmp_path)])
    assert f"--out {tmp_path} exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_outside_git_every_file_but_environments_outputs_and_caches(tmp_path):
    for name in ("a.py", "sub/b.txt", ".venv/lib.py", "runs/x/last.pt", "data/c.bin",
                 "__pycache__/a.pyc", "sub/.pytest_cache/v"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert make_assignment.repo_files(tmp_path) == [Path("a.py"), Path("sub/b.txt")]
