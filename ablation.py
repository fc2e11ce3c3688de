"""The paper's ablation table by one command: LLB with each of its parts switched off, N seeds.

    python ablation.py                               # synthetic set on a CPU: a few minutes
    python ablation.py --seeds 3 --recipe vit-b16-in21k --data-dir /data/imagenet --gpus 4

Every option other than --out-dir and --seeds goes to train.py as it is (the authors ran 4 GPUs
x 128: --gpus 4 and the default --batch-size 128; p~ of L_div is per process, so 8 x 64 averages
it over half as many patches). For each seed s = 0..N-1 (train.py --seed s), into
<out-dir>/seed<s>/: when no backbone is given (--pretrained, --backbone, a recipe's weights), a
ViT is trained first (backbone/, one per seed); then one LLB run per trained row on that frozen
backbone: full LLB (full/), --no-disconnect, --no-diversity and --pos-embed (the paper's "w/o
visual disconnection", "w/o diversity" and "w/ Pos."). Rows read from those runs, not trained:
"w/o integration" is p_N of the full runs (integration changes only the evaluation: the full
run's branch is the one a --no-integrate run would train), and "baseline ViT" is p_V of the full
runs, the frozen backbone's own head. Only when the backbone is trained here, one more row,
"ViT, same extra epochs": the ViT trained for its epochs plus the LLB stage's epochs (--method
vit --epochs E_vit+E_llb, same data and seed, vit_same_epochs/), so that "LLB helps" is not
"more training helps". Writes <out-dir>/ablation.md and ablation.json: per row the mean and the
sample standard deviation over the seeds (as the poster: "84.80 +- 0.05"), each seed's value,
and the paper's number (ViT-B/16 IN21K -> IN1K, top-1 of p_O). A run that finished is read back,
one that was interrupted is resumed: running the command again completes the table.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import recipes
import train
from util import cli

# (row, the switch given to train.py, the paper's top-1 % on IN1K with ViT-B/16 IN21K -> IN1K)
ROWS = [
    ("LLB (all parts)", None, 84.80),
    ("w/o visual disconnection", "--no-disconnect", 84.25),
    ("w/o diversity regularizer", "--no-diversity", 84.74),
    ("w/ position embedding", "--pos-embed", 84.77),
]
# rows read from the full runs: (row, the prediction of the full run, the paper's top-1 %)
DERIVED = [
    ("w/o integration (p_N alone)", "top1_nonvisual", 82.58),
    ("baseline ViT (p_V)", "top1_visual", 84.40),
]
SAME_EPOCHS = "ViT, same extra epochs"  # the ViT trained E_vit + E_llb epochs, no LLB
SEEDS = 1  # --seeds: runs per row


def parse_args(argv=None) -> tuple[argparse.Namespace, list]:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,  # --seed is train.py's
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/ablation", help="default runs/ablation")
    p.add_argument("--seeds", type=int, default=SEEDS,
                   help=f"runs per row, seeds 0..N-1 (default {SEEDS})")
    args, forwarded = p.parse_known_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    for own in ("--method", "--no-disconnect", "--no-diversity", "--pos-embed", "--no-integrate",
                "--eval-only", "--overwrite", "--seed"):
        if any(a == own or a.startswith(own + "=") for a in forwarded):
            p.error(f"{own} is set by ablation.py for each row (seeds: --seeds N); drop it")
    return args, forwarded


def run_or_read(argv: list, folder: Path) -> dict:
    """The results.json of train.py on argv into folder: read back if that run finished, resumed
    if it was interrupted, trained otherwise. (Read from the file also after training: with
    --gpus N, train.main returns nothing to this process; rank 0 wrote the file.)"""
    if not (folder / "results.json").exists():
        resume = ["--resume"] if (folder / "last.pt").exists() else []
        train.main(argv + ["--out-dir", str(folder), *resume])
    return json.loads((folder / "results.json").read_text())


def without(argv: list, option: str) -> list:
    """argv without `option` and its value ("--epochs 3" or "--epochs=3")."""
    kept = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            kept.append(a)
    return kept


def mean_std(values: list) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1; None for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def summarize(name: str, source: str, paper: float | None, runs: list) -> dict:
    """A row: each seed's run (seed, folder, top1, top1_visual, top1_nonvisual) and, per
    prediction, the mean and sample std over the seeds."""
    row = dict(row=name, source=source, paper_top1=paper, runs=runs)
    for key in ("top1", "top1_visual", "top1_nonvisual"):
        values = [r[key] for r in runs if r[key] is not None]
        mean, std = mean_std(values) if values else (None, None)
        row[key] = mean
        row[f"{key}_std"] = std
    return row


def one_seed(forwarded: list, folder: Path, seed: int) -> dict:
    """Every trained run of one seed: {row name or "backbone": (folder, results)}."""
    argv = forwarded + ["--seed", str(seed)]
    runs = {}
    backbone = []
    options = train.parse_args(forwarded + ["--method", "vit"])  # what the rows are given
    weights = recipes.named_recipe(options.recipe, options.dataset)[1].get("pretrained")
    trains_backbone = not (options.pretrained or options.backbone or weights)
    if trains_backbone:  # one backbone per seed, trained here
        runs["backbone"] = (folder / "backbone",
                            run_or_read(argv + ["--method", "vit"], folder / "backbone"))
        backbone = ["--backbone", str(folder / "backbone" / "last.pt")]
    for name, switch, _ in ROWS:
        where = folder / (switch.lstrip("-") if switch else "full")
        switches = [switch] if switch else []
        runs[name] = (where, run_or_read(argv + backbone + ["--method", "llb", *switches], where))
    if trains_backbone:  # the ViT trained as long as the ViT stage and the LLB stage together
        epochs = runs["backbone"][1]["epochs"] + runs[ROWS[0][0]][1]["epochs"]
        where = folder / "vit_same_epochs"
        longer = without(argv, "--epochs") + ["--method", "vit", "--epochs", str(epochs)]
        runs[SAME_EPOCHS] = (where, run_or_read(longer, where))
    return runs


def main(argv=None) -> dict:
    args, forwarded = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out_dir)
    seeds = list(range(args.seeds))
    trained = {s: one_seed(forwarded, out / f"seed{s}", s) for s in seeds}

    def run_of(s: int, name: str, top1_key: str = "top1_integrated") -> dict:
        folder, results = trained[s][name]
        return dict(seed=s, folder=str(folder), top1=results[top1_key],
                    top1_visual=results["top1_visual"], top1_nonvisual=results["top1_nonvisual"])

    rows = [summarize(name, "trained", paper, [run_of(s, name) for s in seeds])
            for name, _, paper in ROWS]
    symbol = {"top1_nonvisual": "p_N", "top1_visual": "p_V"}
    rows += [summarize(name, f"the full runs' {symbol[key]}", paper,
                       [run_of(s, ROWS[0][0], key) for s in seeds])
             for name, key, paper in DERIVED]
    if SAME_EPOCHS in trained[0]:
        epochs = trained[0][SAME_EPOCHS][1]["epochs"]
        rows.append(summarize(SAME_EPOCHS, f"a ViT trained {epochs} epochs (backbone's + LLB's)",
                              None, [run_of(s, SAME_EPOCHS, "top1_visual") for s in seeds]))
    report = {"command": forwarded, "seeds": seeds, "rows": rows}
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(report, " ".join(["python ablation.py", *forwarded, "--seeds", str(args.seeds),
                                   "--out-dir", str(out)]))
    (out / "ablation.md").write_text(text)
    print("\n" + text)
    return report


def cell(mean: float | None, std: float | None) -> str:
    """The poster's "84.80 +- 0.05" (mean +- sample std over the seeds); one seed: "84.80"."""
    if mean is None:
        return ""
    return f"{mean:.2f}" if std is None else f"{mean:.2f} +- {std:.2f}"


def table(report: dict, command: str) -> str:
    """ablation.md: the command, the table, and how to read it."""
    n = len(report["seeds"])
    lines = ["| row | paper (IN1K, ViT-B/16 IN21K) | measured p_O | p_V | p_N | from | "
             "per seed |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        paper = "" if r["paper_top1"] is None else f"{r['paper_top1']:.2f}"
        seeds = ", ".join(f"{run['top1']:.2f}" for run in r["runs"])
        lines.append(f"| {r['row']} | {paper} | {cell(r['top1'], r['top1_std'])} | "
                     f"{cell(r['top1_visual'], r['top1_visual_std'])} | "
                     f"{cell(r['top1_nonvisual'], r['top1_nonvisual_std'])} | {r['source']} | "
                     f"{seeds} |")
    spread = ("mean +- sample standard deviation over the seeds" if n > 1 else
              "one seed (no standard deviation: use --seeds N)")
    return (f"Ablation, measured with: `{command}` (seeds {', '.join(map(str, report['seeds']))})"
            f"\n\n" + "\n".join(lines) + "\n\n"
            f"The paper's column is its Table (ViT-B/16 IN21K -> IN1K, mean over its seeds); the "
            f"measured columns are top-1 % on the validation split of the data given above, last "
            f"epoch of each run, {spread}. \"measured p_O\" is the row's own prediction: p_O of "
            f"an LLB run, p_N or p_V of the full runs for the rows read from them, p_V of the "
            f"longer ViT for \"{SAME_EPOCHS}\" (no LLB there, so its p_N is empty).\n")


if __name__ == "__main__":
    sys.exit(cli.run(main))
