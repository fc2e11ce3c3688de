"""The recipe record (recipes.py), the one training step, and the layout of the programs."""
import ast
import glob
import json
import math
import os
import sys
from dataclasses import asdict

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import benchmark
import data
import train
import recipes
from util import evaluate

REPO = os.path.dirname(os.path.abspath(train.__file__))
TINY = ["--dataset", "synthetic", "--max-per-class", "12", "--model", "micro", "--batch-size", "20",
        "--device", "cpu", "--num-objects", "16"]


def test_recipe_is_printed_saved_and_first_in_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    train.main(TINY + ["--method", "vit", "--epochs", "1", "--out-dir", str(out)])
    saved = torch.load(out / "last.pt", weights_only=True)["recipe"]
    # a defaulted setting is a number there, as used, not None
    assert (saved["optimizer"], saved["lr"], saved["weight_decay"]) == ("adamw", 1e-3, 0.05)
    assert (saved["warmup_epochs"], saved["min_lr"], saved["clip_grad"]) == (1.0, 0.0, 1.0)
    assert (saved["defaults"], saved["batch_size"], saved["world_size"]) == ("scratch", 20, 1)
    assert (saved["image_size"], saved["patch_size"], saved["augment"]) == (32, 8, "none")
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first == {"recipe": saved}
    printed = capsys.readouterr().out
    assert "recipe: stage=vit defaults=scratch" in printed and " lr=0.001" in printed
    assert "patch_size=8 (recipe demo)" in printed


def test_each_stage_resolves_its_own_defaults():
    args = train.parse_args(["--dataset", "imagenet", "--data-dir", "x", "--method", "llb",
                             "--pretrained", "vit_b_16:IMAGENET1K_SWAG_E2E_V1"])
    (r, folder), = recipes.plan(args)
    assert (r.stage, r.defaults, r.optimizer, r.lr, r.epochs) == ("llb", "llb", "adam", 1e-4, 70)
    assert (r.image_size, r.augment, r.batch_size) == (384, "paper", 128)  # SWAG: 384 px
    assert r.llb["num_objects"] == 2048 and r.llb["layer"] == 11 and r.llb["depth"] == 6
    assert folder.name == "imagenet_llb"
    # the demo: both stages of vit+llb, the LLB stage with the synthetic set's own sizes
    (v, _), (lb, _) = recipes.plan(train.parse_args(["--lr", "0.002"]))
    assert (v.defaults, v.lr, v.epochs, v.model) == ("scratch", 0.002, 24, "micro")
    assert (lb.defaults, lb.lr, lb.epochs, lb.llb["num_objects"]) == ("llb", 0.002, 4, 64)
    assert lb.backbone.endswith(os.path.join("vit", "last.pt")) and lb.model is None
    # a ViT from scratch on a folder of small images it cannot read: no augmentation, ViT-Ti/4
    args = train.parse_args(["--dataset", "folder", "--data-dir", "x", "--image-size", "32",
                             "--method", "vit"])
    (r, _), = recipes.plan(args)
    assert (r.augment, r.model, r.patch_size, r.lr) == ("none", "tiny", 4, 1e-3)


def test_a_named_recipe_is_a_paper_row_and_options_go_on_top():
    """--recipe NAME sets what the row needs (method, data, weights, framing); the command line
    wins over it; the values it set say so in the printed recipe."""
    args = train.parse_args(["--recipe", "swag-b16", "--data-dir", "/data/imagenet"])
    assert args.method == "llb" and args.out_dir == os.path.join("runs", "imagenet_llb")
    (r, _), = recipes.plan(args)
    assert (r.dataset, r.pretrained, r.eval_framing) == (
        "imagenet", "vit_b_16:IMAGENET1K_SWAG_E2E_V1", "authors")
    assert (r.defaults, r.lr, r.epochs, r.image_size, r.augment) == ("llb", 1e-4, 70, 384, "paper")
    assert r.origin["pretrained"] == "recipe swag-b16" and "data_dir" not in r.origin
    assert "pretrained=vit_b_16:IMAGENET1K_SWAG_E2E_V1 (recipe swag-b16)" in r.describe()
    (mine, _), = recipes.plan(train.parse_args(["--recipe", "swag-b16", "--data-dir", "d",
                                                "--epochs", "3", "--eval-framing", "weights"]))
    assert (mine.epochs, mine.eval_framing) == (3, "weights") and "epochs" not in mine.origin
    # every named recipe resolves (its weights' sizes are known without a download)
    for name, values in recipes.RECIPES.items():
        where = [] if values["dataset"] == "synthetic" else ["--data-dir", "d"]
        for r, _ in recipes.plan(train.parse_args(["--recipe", name, *where])):
            assert r.origin.get("dataset") == f"recipe {name}", name
    # the demo's recipe applies on the synthetic set, and only there
    (v, _), (lb, _) = recipes.plan(train.parse_args([]))
    assert (v.epochs, lb.epochs, lb.lr, lb.llb["num_objects"]) == (24, 4, 1e-3, 64)
    assert lb.origin["num_objects"] == "recipe demo"
    (v, _), (lb, _) = recipes.plan(train.parse_args(["--dataset", "imagenet", "--data-dir", "x"]))
    assert (v.epochs, v.model, lb.llb["num_objects"], lb.lr) == (70, "base", 2048, 1e-4)


def test_help_says_where_each_default_comes_from(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for name, values in [*recipes.RECIPES.items(), *recipes.STAGES.items()]:
        assert f"  {name}: " in text, name
        assert all(f"{k}={v}" in text.replace("\n      ", " ") for k, v in values.items()), name
    assert "num_objects=2048" in text and "epochs=70" in text and "batch_size=128" in text


def test_the_llb_stage_defaults_to_the_authors_recipe_exactly():
    """Adam with coupled L2 1e-4 on every trainable parameter (biases and LayerNorms too), no
    clipping, no warmup, cosine to eta_min 5e-5, fp32 evaluation; a ViT keeps its own."""
    (v, _), (r, _) = recipes.plan(train.parse_args(["--dataset", "folder", "--data-dir", "x"]))
    assert (r.optimizer, r.weight_decay, r.decay_all, r.clip_grad) == ("adam", 1e-4, True, 0.0)
    assert (r.lr, r.min_lr, r.warmup_epochs, r.eval_amp) == (1e-4, 5e-5, 0.0, False)
    assert (v.optimizer, v.decay_all, v.clip_grad, v.eval_amp) == ("adamw", False, 1.0, True)
    model = train.build_model(v, num_classes=3)
    params = list(model.parameters())
    opt = train.build_optimizer(params, name=r.optimizer, lr=r.lr, weight_decay=r.weight_decay,
                                 decay_all=r.decay_all, device=torch.device("cpu"))
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    (group,) = opt.param_groups
    assert group["weight_decay"] == 1e-4 and len(group["params"]) == len(params)
    opt = train.build_optimizer(params, name="adamw", lr=1e-3, weight_decay=0.05,
                                 decay_all=False, device=torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert all(p.ndim >= 2 for p in decayed["params"]) and plain["weight_decay"] == 0.0
    assert all(p.ndim < 2 for p in plain["params"])
    with pytest.raises(ValueError, match=r"floor of the learning rate, 5e-05, is above its peak"):
        recipes.plan(train.parse_args(["--method", "llb", "--dataset", "folder", "--data-dir", "x",
                                     "--pretrained", "vit_b_16:IMAGENET1K_V1", "--lr", "1e-5"]))


def test_layer_is_checked_against_the_backbone_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"layer must be an int in 1\.\.4"):
        train.main(TINY + ["--layer", "9", "--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "vit" / "last.pt").exists()  # the ViT stage never started


def test_training_loop_reads_the_loss_back_every_log_interval_only(monkeypatch):
    """No host sync per step: this project's code reads tensors back only every LOG_EVERY steps.
    Every way of reading a tensor on the host is spied on when called from a file of the repo."""
    args = train.parse_args(TINY + ["--method", "vit+llb", "--batch-size", "2",
                                    "--max-per-class", "5"])
    r = recipes.plan(args)[1][0]
    r.backbone = None  # LLB on a fresh ViT: only the step is tested here
    r.model, r.patch_size = "micro", 8
    train_set, _, info = data.build_datasets("synthetic", max_per_class=5)
    loader = data.build_loader(train_set, batch_size=2, train=True)
    model = train.build_model(r, info.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = train.build_optimizer(params, name="adam", lr=1e-3, weight_decay=0.0,
                                       decay_all=True, device=torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            caller = sys._getframe(1)
            if os.path.abspath(caller.f_code.co_filename) in PROGRAM_FILES:
                reads.append(f"{_name} at {os.path.basename(caller.f_code.co_filename)}:"
                             f"{caller.f_lineno}")
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    sums = train.train_epoch(model, loader, optimizer, scaler, r, epoch=0)
    steps = sums["steps"]
    assert steps == 25
    # two reads (the statistics, the first non-finite step) per log point: steps 10, 20, 25
    assert len(reads) <= 2 * math.ceil(steps / train.LOG_EVERY) < steps, reads


def project_modules() -> dict[str, str]:
    """Every module of the project, tests excluded: dotted name -> file."""
    files = glob.glob(os.path.join(REPO, "*.py")) + glob.glob(os.path.join(REPO, "*", "*.py"))
    names = {}
    for path in files:
        rel = os.path.relpath(path, REPO)
        if os.path.basename(rel).startswith("test_") or rel.split(os.sep)[0] in ("tests", ".venv"):
            continue
        names[rel[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
    return names


# the files whose host reads the loop test counts: the project's, not the tests'
PROGRAM_FILES = {os.path.abspath(p) for p in project_modules().values()}


def test_programs_import_one_way():
    """The modules' imports (inside functions too) form a DAG: no module imports one that
    imports it back, directly or through others (folders included: util.rundir is a module)."""
    modules = project_modules()
    graph = {}
    for m, path in modules.items():
        names = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[m] = sorted(names & set(modules) - {m})

    def cycle_from(m, path):
        if m in path:
            return path[path.index(m):] + [m]
        for n in graph[m]:
            found = cycle_from(n, path + [m])
            if found:
                return found
        return None
    cycles = [c for c in (cycle_from(m, []) for m in sorted(modules)) if c]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"
    assert {"vit", "llb", "data", "train", "recipes", "inputs.pretrained"} <= set(graph)
    assert "train" not in graph["benchmark"] and "train" not in graph["recipes"]


def test_train_help_is_training_only(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--benchmark" not in text and "--analyze" not in text and "--log-sample-ids" not in text
    assert "benchmark.py" in text and "analyze.py" in text  # where those went
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--help"])
    assert "--compile" in capsys.readouterr().out


def test_eval_framing_is_an_option_saved_in_the_recipe_and_taken_by_eval_only(tmp_path):
    """--eval-framing authors: the authors' Resize 256 bicubic -> CenterCrop 224 on AugReg weights
    (whose own is 248), in the Recipe (a checkpoint remembers it), and for --eval-only."""
    root = tmp_path / "f"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (300, 260), (40 * i, 90, 200)).save(root / split / c / f"{i}.png")
    common = ["--dataset", "folder", "--data-dir", str(root), "--method", "vit", "--pretrained",
              "timm:vit_base_patch16_224.augreg_in21k_ft_in1k", "--weights-file", "w.bin",
              "--batch-size", "2"]
    (own, _), = recipes.plan(train.parse_args(common))
    (r, _), = recipes.plan(train.parse_args(common + ["--eval-framing", "authors"]))
    assert (own.eval_framing, r.eval_framing, r.augment) == ("weights", "authors", "paper")
    for rec, val_resize in ((own, [248]), (r, [256])):
        train_loader, val_loader, _ = data.build_loaders(rec, rank=0, world=1, workers=0,
                                                         device=torch.device("cpu"))
        resize = val_loader.dataset.transform.transforms[0]
        assert (resize.size, resize.interpolation.value) == (val_resize, "bicubic")
        assert train_loader.dataset.transform.transforms[0].size == [256]  # the authors' train
        # on the CPU the loader processes run the whole transform (inputs/on_device.py: CUDA)
        assert isinstance(train_loader, DataLoader) and isinstance(val_loader, DataLoader)
        kinds = [type(t).__name__ for t in train_loader.dataset.transform.transforms]
        assert kinds[-2:] == ["PILToTensor", "ToNormalized"] and "AsPIL" in kinds
    # the checkpoint's recipe carries it to --eval-only, which may change it
    ckpt = {"kind": "vit", "recipe": asdict(r)}
    args = train.parse_args(["--eval-only", "x.pt"])
    assert evaluate.checkpoint_recipe(ckpt, "x.pt", args).eval_framing == "authors"
    args = train.parse_args(["--eval-only", "x.pt", "--eval-framing", "weights"])
    assert evaluate.checkpoint_recipe(ckpt, "x.pt", args).eval_framing == "weights"
    older = {"kind": "vit", "recipe": {k: v for k, v in asdict(r).items() if k != "eval_framing"}}
    assert evaluate.checkpoint_recipe(older, "x.pt", train.parse_args(
        ["--eval-only", "x.pt"])).eval_framing == "weights"
    # --resume: a checkpoint older than the option resumes with the default, not another one
    recipes.check_resume(own, older["recipe"], "last.pt")
    with pytest.raises(ValueError, match=r"eval_framing: checkpoint 'weights', this command "
                                         r"'authors'"):
        recipes.check_resume(r, older["recipe"], "last.pt")
