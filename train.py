"""Train a ViT, LLB on a frozen ViT, or both; evaluate, resume, run on N GPUs.

    python train.py                                   # CPU demo: synthetic set, ViT then LLB
    python train.py --dataset cifar100 --data-dir data --download
    python train.py --method llb --dataset imagenet --data-dir /data/imagenet
        --pretrained vit_b_16:IMAGENET1K_SWAG_E2E_V1 --gpus 8 --batch-size 64
    torchrun --nnodes 2 --nproc-per-node 8 train.py --method llb ...   # multi-node: same flags

`--method vit+llb` (default) is `--method vit` into <out-dir>/vit, then `--method llb` on that
frozen ViT into <out-dir>. Each stage writes last.pt / best.pt (best: top-1 on the validation
split), metrics.jsonl and results.json (the LAST epoch's numbers: no selection on validation).
"""
import argparse
import json
import math
import os
import random
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import data
import llb
import vit
from checkpoint import check_same_model, configs_of, load_checkpoint, model_from_checkpoint, save_checkpoint

# Per-stage defaults, for options left unset. llb is the authors' recipe (their paper and code); a ViT from
# scratch uses the DeiT-style AdamW setting; fine-tuning released weights takes a 10x smaller lr.
STAGE_DEFAULTS = {
    "vit": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=1.0),
    "finetune": dict(optimizer="adamw", lr=1e-4, weight_decay=0.05, warmup_epochs=1.0),
    "llb": dict(optimizer="adam", lr=1e-4, weight_decay=1e-4, warmup_epochs=0.0),
}
# The CPU demo (synthetic set) is sized to finish in minutes on 2 cores; its LLB stage uses a
# larger lr and fewer objects than the ImageNet recipe, which it cannot train to a plateau in time.
DEMO = dict(epochs=12, llb_epochs=4, llb_lr=1e-3, num_objects=64)
HEADS = {"visual": "p_V (ViT head)", "nonvisual": "p_N (LLB head)", "integrated": "p_O (integrated)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--method", choices=("vit+llb", "vit", "llb"), default="vit+llb", help="what to train (default vit+llb)")
    g = p.add_argument_group("data").add_argument
    g("--dataset", choices=data.DATASETS, default="synthetic", help="default: synthetic (no download)")
    g("--data-dir", help="root of the dataset's files")
    g("--download", action="store_true", help="download CIFAR / Places365 / iNat2018 into --data-dir")
    g("--image-size", type=int, help="default: the dataset's (32 for synthetic/CIFAR, 224) or the weights'")
    g("--classes", help="imagenet/folder subset: first K classes, or a file with one class name per line")
    g("--max-per-class", type=int, help="imagenet/folder/synthetic subset: at most M images per class")
    g("--randaugment", action="store_true", help="RandAugment(3, 9) on CIFAR (always on for 224 sets)")
    g("--workers", type=int, help="loader processes per rank (default: 0 in-memory, else up to 8)")
    g = p.add_argument_group("model").add_argument
    g("--model", choices=list(vit.PRESETS), help="ViT preset (default: fits the image size)")
    g("--patch-size", type=int, help="default: 8 at 32 px for synthetic, 4 for CIFAR, else the preset's")
    g("--pretrained", help="torchvision weights, e.g. vit_b_16:IMAGENET1K_SWAG_E2E_V1")
    g("--weights-file", help="local copy of the --pretrained .pth (no download)")
    g("--backbone", help="a checkpoint of --method vit to start from (or to put LLB on)")
    g("--dropout", type=float, default=0.0, help="ViT dropout when training one from scratch or weights")
    g = p.add_argument_group("LLB (defaults: the authors' recipe)").add_argument
    g("--layer", type=int, help="backbone block l whose output feeds LLB (default: depth - 1)")
    g("--num-objects", type=int, help="O latent objects (default 2048; 64 in the synthetic demo)")
    g("--llb-depth", type=int, default=6, help="LLB layers, extractor block included")
    g("--tau", type=float, default=0.1, help="assignment softmax temperature")
    g("--alpha", type=float, default=0.8, help="weight of p_V in p_O")
    g("--diversity-weight", type=float, default=0.5, help="lambda, weight of L_div")
    g("--diversity-mode", choices=("batch", "image"), default="batch", help="average of p~")
    g("--no-disconnect", action="store_true", help="ablation: N_0 = visual tokens")
    g("--no-diversity", action="store_true", help="ablation: no L_div")
    g("--pos-embed", action="store_true", help="ablation: position embedding on the LLB tokens")
    g("--no-integrate", action="store_true", help="ablation: p_O = p_N")
    g("--unfreeze", action="store_true", help="train the backbone too (paper: frozen)")
    g = p.add_argument_group("optimization").add_argument
    g("--epochs", type=int, help="default: 70 (paper), 12 on synthetic")
    g("--llb-epochs", type=int, help="LLB stage of vit+llb (default: --epochs; 4 on synthetic)")
    g("--batch-size", type=int, help="per process (default 128, the paper's per GPU; --benchmark: 8 on cpu)")
    g("--lr", type=float, help="peak learning rate (default per stage: see STAGE_DEFAULTS)")
    g("--llb-lr", type=float, help="LLB stage of vit+llb (default: --lr, else the stage's)")
    g("--optimizer", choices=("adamw", "adam"), help="default: adamw for ViT, adam for LLB (paper)")
    g("--weight-decay", type=float)
    g("--warmup-epochs", type=float, help="linear warmup before the cosine decay")
    g("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    g("--label-smoothing", type=float, default=0.0)
    g = p.add_argument_group("runtime").add_argument
    g("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    g("--gpus", type=int, default=1, help="DDP processes to start (with --device cpu: gloo)")
    g("--amp", choices=("bf16", "fp16", "off"), help="autocast (default: bf16 on cuda, off on cpu)")
    g("--compile", action="store_true", help="torch.compile the model")
    g("--seed", type=int, default=0)
    g("--out-dir", help="default: runs/<dataset>_<method>")
    g("--resume", action="store_true", help="continue from <out-dir>/last.pt")
    g("--eval-only", metavar="CKPT", help="evaluate a checkpoint and exit")
    g("--benchmark", action="store_true", help="time training/eval steps against torchvision's ViT")
    g("--analyze", metavar="CKPT", help="latent-object maps and centroid analysis of an LLB checkpoint")
    g("--log-sample-ids", action="store_true", help="write the indices each rank trained on")
    args = p.parse_args(argv)

    if args.pretrained and args.backbone:
        p.error("--pretrained and --backbone both give the backbone: pick one")
    if args.weights_file and not args.pretrained:
        p.error("--weights-file needs --pretrained NAME (which says what the file holds)")
    if args.method == "llb" and not (args.pretrained or args.backbone or args.benchmark):
        p.error("--method llb needs a backbone: --pretrained NAME or --backbone CKPT "
                "(or use --method vit+llb to train one first)")
    if args.method == "vit+llb" and args.backbone:
        p.error("--backbone with --method vit+llb: use --method llb to put LLB on an existing ViT")
    if (args.llb_epochs or args.llb_lr) and args.method != "vit+llb":
        p.error("--llb-epochs/--llb-lr set the LLB stage of --method vit+llb; use --epochs/--lr")
    if args.pretrained and (args.model or args.patch_size):
        p.error("--model/--patch-size come from --pretrained weights; drop them")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.batch_size = args.batch_size or (8 if args.benchmark and args.device == "cpu" else 128)
    if args.gpus < 1 or args.batch_size < 1:
        p.error("--gpus and --batch-size must be >= 1")
    if sum(map(bool, (args.eval_only, args.benchmark, args.analyze))) > 1:
        p.error("--eval-only, --benchmark and --analyze are separate modes: pick one")
    if args.device == "cuda" and args.gpus > torch.cuda.device_count():
        p.error(f"--gpus {args.gpus} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    args.amp = args.amp or ("bf16" if args.device == "cuda" else "off")
    demo = args.dataset == "synthetic" and not args.benchmark  # the benchmark times the paper's sizes
    args.epochs = args.epochs or (DEMO["epochs"] if demo else 70)
    demo_length = demo and args.epochs == DEMO["epochs"]
    args.llb_epochs = args.llb_epochs or (DEMO["llb_epochs"] if demo_length else args.epochs)
    args.llb_lr = args.llb_lr or args.lr or (DEMO["llb_lr"] if demo else None)
    args.num_objects = args.num_objects or (DEMO["num_objects"] if demo else 2048)
    args.out_dir = args.out_dir or f"runs/{args.dataset}_{args.method.replace('+', '_')}"
    return args


# ----------------------------------------------------------------------------- distributed


def launch(argv: list, args) -> None:
    """--gpus N: start N processes of this script on this machine, as torchrun would."""
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_worker, args=(argv, args.gpus, port), nprocs=args.gpus,
                                          start_method="spawn")


def _worker(rank: int, argv: list, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # CPU ranks share the cores
    main(argv)


def setup(args) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group under torchrun or --gpus N."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(args.device)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = torch.device(f"cuda:{local}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_sum(values: list, device) -> list:
    if dist.is_initialized():
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        values = t.tolist()
    return values


# ----------------------------------------------------------------------------- building


def build_data(args, rank=0, world=1):
    spec = vit.pretrained_eval_spec(args.pretrained) if args.pretrained else None
    classes = int(args.classes) if args.classes and args.classes.isdigit() else args.classes
    expected = len(vit.torchvision_weights(args.pretrained)[1].meta["categories"]) \
        if args.pretrained and args.method == "llb" else None
    if args.download and rank > 0:
        dist.barrier()  # wait for rank 0's download, then read it
    train_set, val_set, info = data.build_datasets(
        args.dataset, args.data_dir, image_size=None if spec else args.image_size, eval_spec=spec,
        randaugment=args.randaugment, classes=classes, max_per_class=args.max_per_class,
        download=args.download and rank == 0, seed=args.seed, expected_num_classes=expected,
        weights_name=args.pretrained)
    if args.download and rank == 0 and world > 1:
        dist.barrier()
    loader = dict(workers=args.workers, rank=rank, world_size=world, seed=args.seed,
                  pin_memory=args.device == "cuda")
    return (data.build_loader(train_set, batch_size=args.batch_size, train=True, **loader),
            data.build_loader(val_set, batch_size=args.batch_size, train=False, **loader), info)


def build_backbone(args, info, backbone_ckpt: str | None):
    if backbone_ckpt:  # --backbone, or the ViT stage of vit+llb (which may itself be --pretrained)
        ckpt = load_checkpoint(backbone_ckpt)
        model = model_from_checkpoint(ckpt, num_classes=info.num_classes, source=backbone_ckpt)
        return model.backbone if isinstance(model, llb.LLB) else model
    if args.pretrained:
        return vit.load_pretrained(args.pretrained, weights_file=args.weights_file,
                                   num_classes=info.num_classes, dropout=args.dropout)
    name = args.model or ("micro" if args.dataset == "synthetic" else "tiny" if info.image_size <= 64 else "base")
    patch = args.patch_size or (8 if args.dataset == "synthetic" else 4 if info.image_size <= 64 else None)
    return vit.create_vit(name, image_size=info.image_size, num_classes=info.num_classes,
                          dropout=args.dropout, **({"patch_size": patch} if patch else {}))


def build_llb(args, backbone):
    return llb.LLB(backbone, layer=args.layer, num_objects=args.num_objects, depth=args.llb_depth,
                   tau=args.tau, alpha=args.alpha, diversity_weight=args.diversity_weight,
                   diversity_mode=args.diversity_mode, disconnect=not args.no_disconnect,
                   diversity=not args.no_diversity, pos_embed=args.pos_embed,
                   integrate=not args.no_integrate, freeze_backbone=not args.unfreeze)


def build_optimizer(params, *, name, lr, weight_decay, device):
    # Decay matrices and embeddings only, not biases and LayerNorm gains (as nanoGPT)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam  # Adam: the paper's
    return cls(groups, lr=lr, fused=device.type == "cuda")


def lr_at(step: int, *, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to `peak`, then cosine decay to 0 at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------- loops


def heads_of(out) -> dict:
    """Each prediction head's scores: logits or probabilities (argmax and top-k agree)."""
    if isinstance(out, llb.LLBOutput):
        return {"visual": out.logits_v, "nonvisual": out.logits_n, "integrated": out.probs}
    return {"visual": out}


@torch.no_grad()
def evaluate(model, loader, device, autocast) -> dict:
    """Top-1 / top-5 (%) of each head over the whole split, summed across ranks."""
    model.eval()
    correct, total = {}, 0  # head -> (top-1, top-5) counts, kept on the device: no sync per batch
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            scores = heads_of(model(x))
        for head, s in scores.items():
            top5 = s.topk(min(5, s.shape[1]), dim=1).indices == y[:, None]  # (B, 5)
            hits = torch.stack([top5[:, 0].sum(), top5.any(dim=1).sum()])
            correct[head] = correct[head] + hits if head in correct else hits
        total += len(y)
    heads = list(correct)
    sums = all_sum([v for h in heads for v in correct[h].tolist()] + [total], device)
    results = {}
    for i, head in enumerate(heads):
        results[f"top1_{head}"] = 100 * sums[2 * i] / sums[-1]
        results[f"top5_{head}"] = 100 * sums[2 * i + 1] / sums[-1]
    return results


def train_epoch(stage, model, raw, loader, optimizer, scaler, autocast, args, *, epoch, epochs, lr,
                warmup, device, world, log):
    """One pass over the training shard; returns (loss sum, correct, images, seconds)."""
    model.train()
    loader.sampler.set_epoch(epoch)  # the order depends on (seed, epoch) only: resume = straight run
    steps = len(loader)
    if args.log_sample_ids:
        with open(log, "a") as f:
            f.write(json.dumps({"epoch": epoch, "ids": list(loader.sampler)[:steps * args.batch_size]}) + "\n")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bar = tqdm(loader, desc=f"[{stage}] epoch {epoch + 1}/{epochs}", disable=not master(), leave=False)
    seen, loss_sum, hits, t0 = 0, 0.0, torch.zeros((), device=device, dtype=torch.long), time.time()
    for i, (x, y) in enumerate(bar):
        step = epoch * steps + i
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total=epochs * steps, warmup=warmup, peak=lr)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            out = model(x)
        if stage == "llb":
            loss, parts = raw.loss(out, y, label_smoothing=args.label_smoothing)
            logits = out.logits_n  # the head LLB trains
        else:
            loss = F.cross_entropy(out.float(), y, label_smoothing=args.label_smoothing)
            parts, logits = {"total": loss.item()}, out
        if not math.isfinite(parts["total"]):
            raise RuntimeError(f"non-finite loss ({parts['total']}) at step {step} (epoch {epoch + 1}); stopped. "
                               f"The last good checkpoint is kept: {log.parent / 'last.pt'}. Try a lower --lr, "
                               f"--clip-grad 1, or --amp bf16 instead of fp16.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        seen += len(y)
        loss_sum += parts["total"] * len(y)
        hits += (logits.argmax(1) == y).sum()  # on the device: read only when the bar refreshes
        if master() and (i % 10 == 0 or i == steps - 1):
            bar.set_postfix(loss=f"{parts['total']:.3f}", acc=f"{100 * hits.item() / seen:.1f}",
                            img_s=f"{seen * world / (time.time() - t0):.0f}")
    return loss_sum, hits.item(), seen, time.time() - t0


def master() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def autocast_for(args, device):
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=args.amp != "off")


def run_stage(stage: str, args, loaders: tuple, rank: int, world: int, device, out_dir: Path,
              backbone_ckpt: str | None = None) -> dict:
    """Train one stage ("vit" or "llb") to the end, resuming if asked; returns its results.
    `loaders` = build_data(...), built once and shared by both stages of vit+llb."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train_loader, val_loader, info = loaders
    torch.manual_seed(args.seed)  # same init on every rank (DDP also broadcasts it)
    model = build_backbone(args, info, backbone_ckpt)
    if stage == "llb":
        model = build_llb(args, model)
    model.to(device)
    two_stage = args.method == "vit+llb" and stage == "llb"
    hp = STAGE_DEFAULTS["finetune" if stage == "vit" and (args.pretrained or args.backbone) else stage]
    lr = (args.llb_lr if two_stage else args.lr) or hp["lr"]
    epochs = args.llb_epochs if two_stage else args.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, name=args.optimizer or hp["optimizer"], lr=lr, device=device,
                                weight_decay=hp["weight_decay"] if args.weight_decay is None else args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")  # fp16 needs loss scaling
    steps_per_epoch = len(train_loader)
    warmup = round(steps_per_epoch * (hp["warmup_epochs"] if args.warmup_epochs is None else args.warmup_epochs))
    start_epoch, best = 0, -1.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if args.resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        check_same_model(ckpt, model, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best = ckpt["epoch"], ckpt["best_top1"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        random.setstate(ckpt["rng"]["python"])
        if device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        if master():
            print(f"[{stage}] resumed from {last_path} at epoch {start_epoch}/{epochs}")
    elif args.resume and master():
        print(f"[{stage}] --resume: no {last_path} yet, starting from epoch 1")
    raw = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        model = torch.compile(model)
    autocast = autocast_for(args, device)
    if master():
        n_train = sum(p.numel() for p in params)
        print(f"[{stage}] {info.name}: {len(train_loader.dataset)} train / {len(val_loader.dataset)} val images, "
              f"{info.num_classes} classes, {info.image_size} px | {n_train:,} trainable parameters | "
              f"{epochs} epochs x {steps_per_epoch} steps, global batch {args.batch_size * world} "
              f"({world} x {args.batch_size}), lr {lr:g}, {device.type}, amp {args.amp}")
    results, log = {}, out_dir / f"samples_rank{rank}.jsonl"
    for epoch in range(start_epoch, epochs):
        loss_sum, hits, seen, seconds = train_epoch(stage, model, raw, train_loader, optimizer, scaler, autocast, args,
                                                    epoch=epoch, epochs=epochs, lr=lr, warmup=warmup, device=device,
                                                    world=world, log=log)
        loss_sum, hits, seen = all_sum([loss_sum, hits, seen], device)
        results = evaluate(model, val_loader, device, autocast)
        top1 = results.get("top1_integrated", results["top1_visual"])  # what best.pt is chosen by
        record = dict(stage=stage, epoch=epoch + 1, train_loss=loss_sum / seen, train_top1=100 * hits / seen,
                      **results, img_s=seen / seconds, time_s=seconds)
        if master():
            state = dict(kind=stage, **configs_of(raw), model=raw.state_dict(), optimizer=optimizer.state_dict(),
                         scaler=scaler.state_dict(), epoch=epoch + 1, best_top1=max(best, top1),
                         dataset=info.name, args=vars(args),
                         rng=dict(torch=torch.get_rng_state(), python=random.getstate(),
                                  cuda=torch.cuda.get_rng_state_all() if device.type == "cuda" else []))
            save_checkpoint(last_path, state)
            if top1 > best:
                save_checkpoint(best_path, state)
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            heads = "  ".join(f"{h} {results['top1_' + h]:.1f}" for h in HEADS if "top1_" + h in results)
            tqdm.write(f"[{stage}] epoch {epoch + 1}/{epochs}  loss {record['train_loss']:.3f}  train "
                       f"{record['train_top1']:.1f}%  val top-1: {heads}  |  "
                       f"{record['img_s']:.0f} img/s  {seconds:.1f} s")
        best = max(best, top1)
    if not results:  # resumed a finished run: evaluate what it holds
        results = evaluate(model, val_loader, device, autocast)
    results = {f"{m}_{h}": results.get(f"{m}_{h}") for h in HEADS for m in ("top1", "top5")}
    if world > 1:  # DDP must keep the replicas identical: check it rather than assume it
        mine = sum(float(p.detach().double().sum()) * (i + 1) for i, p in enumerate(raw.parameters()))
        fingerprints = [None] * world
        dist.all_gather_object(fingerprints, mine)
        if len(set(fingerprints)) > 1:
            raise RuntimeError(f"DDP replicas diverged: parameter fingerprints per rank {fingerprints}")
        results["param_fingerprint_per_rank"] = fingerprints
    if master():
        (out_dir / "results.json").write_text(json.dumps(dict(results, stage=stage, dataset=info.name,
                                                              epochs=epochs), indent=2) + "\n")
    return results


def print_table(results: dict, title: str) -> None:
    print(f"\n{title}\n{'prediction':<22}{'top-1':>8}{'top-5':>8}")
    for head, label in HEADS.items():
        if results.get(f"top1_{head}") is not None:
            print(f"{label:<22}{results[f'top1_{head}']:>8.2f}{results[f'top5_{head}']:>8.2f}")


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.gpus > 1 and "RANK" not in os.environ:
        return launch(argv, args)
    rank, world, device = setup(args)
    try:
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        out_dir = Path(args.out_dir)
        if args.benchmark:
            import benchmark
            return benchmark.run(args, device)
        if args.analyze:
            import analyze
            return analyze.run(args, device)
        loaders = build_data(args, rank, world)
        if args.eval_only:
            ckpt = load_checkpoint(args.eval_only)
            _, val_loader, info = loaders
            model = model_from_checkpoint(ckpt, num_classes=info.num_classes, source=args.eval_only).to(device)
            results = evaluate(model, val_loader, device, autocast_for(args, device))
            if master():
                print_table(results, f"{args.eval_only} on {info.name} validation ({len(val_loader.dataset)} images)")
            return results
        if args.method == "vit+llb":
            run_stage("vit", args, loaders, rank, world, device, out_dir / "vit")
            vit_ckpt = str(out_dir / "vit" / "last.pt")  # the ViT as trained, not selected on val
            results = run_stage("llb", args, loaders, rank, world, device, out_dir, backbone_ckpt=vit_ckpt)
        else:
            results = run_stage(args.method, args, loaders, rank, world, device, out_dir,
                                backbone_ckpt=args.backbone)
        if master():
            print_table(results, f"{args.dataset} validation, {args.method}, results in {out_dir}/results.json")
        return results
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
