"""Make the student version of this repository for a course: the chosen methods are blanked.

    python make_assignment.py --steps 1,2,3,4 --out ../course           # the four LLB steps
    python make_assignment.py --steps 2 --vit attention,block --out ../course2

Copies the repository's files (those `git ls-files` lists in a git checkout, untracked ones not
ignored included; else every file but .git, .venv, runs, data and caches) into --out, a new or
empty directory, and replaces the body of each chosen method by its docstring and a
`raise NotImplementedError("...")` that states the equation, the input and output shapes and
the command that grades it. Everything else (tests, data code, train.py, README) is copied as
is. The methods are found by class and method name (`ast`), never by line number.

    --steps   method                       graded by
    1         llb.LLB.extract_objects      pytest -m step1
    2         llb.LLB.disconnect           pytest -m step2
    3         llb.LLB.structure            pytest -m step3
    4         llb.LLB.integrate            pytest -m step4
    --vit
    attention vit.Attention.forward        pytest -m vit_attention
    block     vit.Block.forward            pytest -m vit_block

Each marker's tests feed that method inputs they build and compare with plain torch ops, so a
student's bug in one step fails that step's tests only. A completed copy runs `python train.py`.
"""
import argparse
import ast
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Not copied outside a git checkout: version control, environments, outputs, caches.
SKIP = {".git", ".venv", "venv", "runs", "data", "__pycache__", ".pytest_cache", ".mypy_cache",
        ".ruff_cache"}


@dataclass(frozen=True, kw_only=True)
class Blank:
    file: str  # the file that holds the method, relative to the repository root
    cls: str  # the class that holds it
    method: str  # the method whose body is blanked
    marker: str  # the pytest marker of its graded tests
    equation: str  # what to compute, for the NotImplementedError message
    shapes: str  # its input and output shapes, for the same message


STEPS = {
    "1": Blank(file="llb.py", cls="LLB", method="extract_objects", marker="step1",
               equation="LLB step 1, latent object extraction: p^i = Softmax(MLP(v_l^i) / tau), "
                        "MLP = self.extractor, then self.to_objects on the N patch tokens",
               shapes="In: z_l (B, 1 + N, D). Out: assign A (B, N, O) in float32, "
                      "the extractor's patch outputs (B, N, D)."),
    "2": Blank(file="llb.py", cls="LLB", method="disconnect", marker="step2",
               equation="LLB step 2, visual dependency disconnection: N_0 = A N_emb, "
                        "N_emb = self.object_embed (O, D)",
               shapes="In: assign A (B, N, O). Out: object_tokens N_0 (B, N, D)."),
    "3": Blank(file="llb.py", cls="LLB", method="structure", marker="step3",
               equation="LLB step 3, non-visual feature structuring: g([c_n || N_0]), "
                        "g = self.blocks, then LN(c_n) with self.norm",
               shapes="In: object_tokens N_0 (B, N, D). Out: feat_n (B, D)."),
    "4": Blank(file="llb.py", cls="LLB", method="integrate", marker="step4",
               equation="LLB step 4, integration: p_O = alpha p_V + (1 - alpha) p_N, "
                        "p_V = Softmax(logits_v), p_N = Softmax(logits_n)",
               shapes="In: logits_v (B, K), logits_n (B, K). Out: probs p_O (B, K) in float32."),
}
VIT_PARTS = {
    "attention": Blank(file="vit.py", cls="Attention", method="forward", marker="vit_attention",
                       equation="ViT Eqs. (5)-(8), multi-head self-attention: "
                                "[q, k, v] = z U_qkv; per head attn = softmax(q k^T / sqrt(D_h)), "
                                "F.dropout on attn in training, SA = attn v; heads concatenated, "
                                "then U_msa. Write Eqs. (6)-(7) out for self.fused False (graded "
                                "without F.scaled_dot_product_attention, which self.fused True "
                                "may call)",
                       shapes="In: z (B, N, D). Out: MSA(z) (B, N, D)."),
    "block": Blank(file="vit.py", cls="Block", method="forward", marker="vit_block",
                   equation="ViT Eqs. (2)-(3), pre-norm block: z' = MSA(LN(z)) + z, "
                            "then MLP(LN(z')) + z'",
                   shapes="In: z (B, N, D). Out: z_l (B, N, D)."),
}


def repo_files(root: Path) -> list[Path]:
    """The files to copy, relative to root: git's list in a checkout, else a walk minus SKIP."""
    if (root / ".git").exists():
        command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                   "--exclude-standard"]
        listed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        names = sorted(set(name for name in listed.split("\0") if name))
        return [Path(name) for name in names if (root / name).is_file()]  # deleted ones skipped
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and not SKIP & set(p.relative_to(root).parts))


def find_method(tree: ast.Module, blank: Blank) -> ast.FunctionDef:
    """The method `blank.cls.blank.method` at the top level of a parsed file."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == blank.cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == blank.method:
                    return item
    raise ValueError(f"{blank.file} has no method {blank.cls}.{blank.method}; make_assignment.py "
                     f"blanks it for `pytest -m {blank.marker}`: update its table if it moved")


def message(blank: Blank) -> str:
    """What the student sees when the blank runs: the task and the command that grades it."""
    return (f"{blank.equation}. {blank.shapes} Implement {blank.cls}.{blank.method} in "
            f"{blank.file}; check it with: pytest -m {blank.marker}")


def stub(blank: Blank, indent: str) -> list[str]:
    """The lines that replace the body: raise NotImplementedError(message), lines <= 100."""
    # drop_whitespace=False: the pieces, concatenated, are the message itself
    pieces = textwrap.wrap(message(blank), width=100 - len(indent) - 7, drop_whitespace=False,
                           break_on_hyphens=False)
    lines = [f"{indent}raise NotImplementedError("]
    lines += [f"{indent}    {json.dumps(piece)}" for piece in pieces]  # a Python string too
    lines[-1] += ")"
    return lines


def blank_source(source: str, blanks: list[Blank]) -> str:
    """`source` with the body of each blank's method replaced by its docstring and a stub."""
    lines = source.splitlines()
    tree = ast.parse(source)
    methods = [(find_method(tree, blank), blank) for blank in blanks]
    # bottom-up, so that each replacement leaves the line numbers above it valid
    for fn, blank in sorted(methods, key=lambda pair: pair[0].lineno, reverse=True):
        if ast.get_docstring(fn) is None:
            raise ValueError(f"{blank.file}: {blank.cls}.{blank.method} has no docstring; the "
                             f"student copy keeps it as the task's statement: write one first")
        doc = fn.body[0]  # the docstring statement
        indent = lines[doc.lineno - 1][:doc.col_offset]
        # lines doc.end_lineno + 1 .. fn.end_lineno (1-based) are the body after the docstring
        lines[doc.end_lineno:fn.end_lineno] = stub(blank, indent)
    return "\n".join(lines) + "\n"


def make_assignment(root: Path, out: Path, blanks: list[Blank]) -> list[Path]:
    """Copy root's files into out, blanks applied; returns the copied paths (relative)."""
    files = repo_files(root)
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, out / name)
    for file in sorted({blank.file for blank in blanks}):
        source = (root / file).read_text()
        mine = [blank for blank in blanks if blank.file == file]
        (out / file).write_text(blank_source(source, mine))
    return files


def parse_names(parser, text: str, table: dict, option: str) -> list[Blank]:
    """'1,2' -> the Blanks of those names; an unknown name stops with the valid ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in table]
    if unknown:
        parser.error(f"unknown {option} {', '.join(unknown)}; valid: {', '.join(table)} "
                     f"(comma-separated, e.g. {option} {','.join(table)})")
    return [table[name] for name in dict.fromkeys(names)]


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked before anything is written: args.blanks, args.out (a Path)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="", help="LLB steps to blank, e.g. 1,2,3,4")
    parser.add_argument("--vit", default="", help="ViT parts to blank: attention,block")
    parser.add_argument("--out", required=True, help="new or empty directory for the copy")
    args = parser.parse_args(argv)
    args.blanks = (parse_names(parser, args.steps, STEPS, "--steps")
              + parse_names(parser, args.vit, VIT_PARTS, "--vit"))
    if not args.blanks:
        parser.error(f"nothing to blank: give --steps ({','.join(STEPS)}) "
                     f"and/or --vit ({','.join(VIT_PARTS)})")
    out = args.out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} exists and is not an empty directory; give a new or empty "
                     f"directory (the copy is written there, nothing is overwritten)")
    if out.resolve().is_relative_to(ROOT):
        parser.error(f"--out {out} is inside the repository {ROOT}: the student copy would be "
                     f"copied into itself and collected by the repository's tests; give a "
                     f"folder outside it, e.g. --out ../course")
    return args


def main(argv=None):
    args = parse_args(argv)  # everything checked before anything is written
    out = args.out

    # Copy and blank; a failed copy removes what it wrote (out was new or empty)
    existed = out.exists()
    try:
        files = make_assignment(ROOT, out, args.blanks)
    except OSError as err:
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir(exist_ok=True)
        print(f"error: cannot write the copy into {out} ({err.strerror or err}: "
              f"{err.filename or ''}); nothing is left there. Give a writable folder with room "
              f"for the repository's files.", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files to {out}; blanked:")
    for blank in args.blanks:
        print(f"  {blank.file}: {blank.cls}.{blank.method}  (grade: pytest -m {blank.marker})")


if __name__ == "__main__":
    sys.exit(main())
