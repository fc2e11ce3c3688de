"""The paper's ablation table by one command: LLB with each of its four parts switched off.

    python ablation.py                               # synthetic set on a CPU: a few minutes
    python ablation.py --dataset imagenet --data-dir /data/imagenet --gpus 8 --batch-size 64 \\
        --pretrained timm:vit_base_patch16_224.augreg_in21k_ft_in1k --weights-file model.bin

Every option other than --out-dir goes to train.py as it is. Rows, each an LLB run on the same
frozen backbone (--pretrained or --backbone; otherwise a ViT is trained first, into
<out-dir>/backbone): full LLB, then --no-disconnect, --no-diversity, --pos-embed and
--no-integrate (the paper's "w/o visual disconnection", "w/o diversity", "w/ Pos." and "w/o
integration"). The "baseline ViT" row is p_V of the full run: the frozen backbone's own head,
the same in every run. Writes <out-dir>/ablation.md and ablation.json with the paper's number
(ViT-B/16 IN21K -> IN1K, top-1 of p_O) beside each measured one. A row whose run finished is
read back, one that was interrupted is resumed: running the command again completes the table.
"""
import argparse
import json
import sys
from pathlib import Path

import train
from util import cli

# (row, the switch given to train.py, the paper's top-1 % on IN1K with ViT-B/16 IN21K -> IN1K)
ROWS = [
    ("LLB (all parts)", None, 84.80),
    ("w/o visual disconnection", "--no-disconnect", 84.25),
    ("w/o diversity regularizer", "--no-diversity", 84.74),
    ("w/ position embedding", "--pos-embed", 84.77),
    ("w/o integration (p_N alone)", "--no-integrate", 82.58),
]
BASELINE_PAPER = 84.40


def parse_args(argv=None) -> tuple[argparse.Namespace, list]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/ablation", help="default runs/ablation")
    args, forwarded = p.parse_known_args(argv)
    for own in ("--method", "--no-disconnect", "--no-diversity", "--pos-embed", "--no-integrate",
                "--eval-only", "--overwrite"):
        if own in forwarded:
            p.error(f"{own} is set by ablation.py for each row; drop it")
    return args, forwarded


def run_or_read(argv: list, folder: Path) -> dict:
    """The results of train.py on argv into folder: read back if that run finished, resumed if
    it was interrupted, trained otherwise."""
    if (folder / "results.json").exists():
        return json.loads((folder / "results.json").read_text())
    resume = ["--resume"] if (folder / "last.pt").exists() else []
    return train.main(argv + ["--out-dir", str(folder), *resume])


def main(argv=None) -> dict:
    args, forwarded = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out_dir)
    # the backbone every row shares: given, or trained once here
    backbone = []
    if "--pretrained" not in forwarded and "--backbone" not in forwarded:
        run_or_read(forwarded + ["--method", "vit"], out / "backbone")
        backbone = ["--backbone", str(out / "backbone" / "last.pt")]
    # one LLB run per row
    rows = []
    for name, switch, paper in ROWS:
        folder = out / (switch.lstrip("-") if switch else "full")
        switches = [switch] if switch else []
        results = run_or_read(forwarded + backbone + ["--method", "llb", *switches], folder)
        rows.append(dict(row=name, switch=switch, paper_top1=paper, folder=str(folder),
                         top1=results["top1_integrated"], top1_visual=results["top1_visual"],
                         top1_nonvisual=results["top1_nonvisual"]))
    baseline = dict(row="baseline ViT (p_V)", switch=None, paper_top1=BASELINE_PAPER,
                    folder=rows[0]["folder"], top1=rows[0]["top1_visual"],
                    top1_visual=rows[0]["top1_visual"], top1_nonvisual=None)
    report = {"command": forwarded, "rows": rows + [baseline]}
    # the table
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| row | paper (IN1K, ViT-B/16 IN21K) | measured p_O | p_V | p_N | folder |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        p_n = "" if r["top1_nonvisual"] is None else f"{r['top1_nonvisual']:.2f}"
        lines.append(f"| {r['row']} | {r['paper_top1']:.2f} | {r['top1']:.2f} | "
                     f"{r['top1_visual']:.2f} | {p_n} | {r['folder']} |")
    command = " ".join(["python ablation.py", *forwarded, "--out-dir", str(out)])
    text = (f"Ablation, measured with: `{command}`\n\n" + "\n".join(lines) + "\n\n"
            "The paper's column is its Table (ViT-B/16 IN21K -> IN1K); the measured columns are "
            "top-1 % on the validation split of the data given above, last epoch of each run.\n")
    (out / "ablation.md").write_text(text)
    print("\n" + text)
    return report


if __name__ == "__main__":
    sys.exit(cli.run(main))
