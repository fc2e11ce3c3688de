"""End-to-end tests of train.py's CLI on tiny synthetic data (CPU, seconds each)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import train

TINY = ["--dataset", "synthetic", "--max-per-class", "12", "--model", "micro", "--batch-size", "20",
        "--device", "cpu", "--num-objects", "16"]


def run(tmp_path, *extra, out="run"):
    return train.main(TINY + ["--out-dir", str(tmp_path / out), *extra])


def params(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_default_method_trains_vit_then_llb(tmp_path, capsys):
    results = run(tmp_path, "--epochs", "2", "--llb-epochs", "1")
    out = tmp_path / "run"
    for f in ("vit/last.pt", "vit/best.pt", "vit/results.json", "last.pt", "best.pt",
              "metrics.jsonl"):
        assert (out / f).exists(), f
    saved = json.loads((out / "results.json").read_text())
    heads = ("visual", "nonvisual", "integrated")
    assert set(results) == {f"top{k}_{h}" for k in (1, 5) for h in heads}
    assert all(saved[k] == results[k] and 0 <= results[k] <= 100 for k in results)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["recipe"]["stage"] == "llb"  # the recipe first, then one line per epoch
    assert [(line["stage"], line["epoch"]) for line in lines[1:]] == [("llb", 1)]
    assert len((out / "vit" / "metrics.jsonl").read_text().splitlines()) == 1 + 2
    # The LLB stage sits on the ViT stage's final weights, frozen: its visual head is the ViT's.
    vit_state, llb_state = params(out / "vit" / "last.pt"), params(out / "last.pt")
    assert all(torch.equal(v, llb_state[f"backbone.{k}"]) for k, v in vit_state.items())
    vit_results = json.loads((out / "vit" / "results.json").read_text())
    assert vit_results["top1_visual"] == results["top1_visual"]
    printed = capsys.readouterr().out
    assert "p_V (ViT head)" in printed and "p_O (integrated)" in printed
    assert "global batch 20" in printed


def test_llb_method_on_a_vit_checkpoint_and_eval_only(tmp_path):
    run(tmp_path, "--method", "vit", "--epochs", "1", out="vit")
    ckpt = str(tmp_path / "vit" / "last.pt")
    results = run(tmp_path, "--method", "llb", "--backbone", ckpt, "--epochs", "1", "--alpha",
                  "0.5",
                  "--no-diversity", out="llb")
    saved = torch.load(tmp_path / "llb" / "last.pt", weights_only=True)
    assert saved["kind"] == "llb" and saved["llb_config"]["alpha"] == 0.5
    assert saved["llb_config"]["diversity"] is False
    # 120 validation images in batches of 7: the last batch (1 image) counts too
    again = train.main(TINY + ["--eval-only", str(tmp_path / "llb" / "last.pt"),
                               "--batch-size", "7"])
    assert again == pytest.approx({k: v for k, v in results.items()})
    assert all(round(v * 120 / 100, 6).is_integer() for v in again.values())  # x / 120 images
    # --method vit --backbone: continue training a ViT checkpoint (fine-tune defaults)
    run(tmp_path, "--method", "vit", "--backbone", ckpt, "--epochs", "1", out="vit2")
    before, after = params(ckpt), params(tmp_path / "vit2" / "last.pt")
    moved = (after["blocks.0.mlp.fc1.weight"] - before["blocks.0.mlp.fc1.weight"]).abs().max()
    assert 0 < moved < 2e-3
    vit_only = train.main(TINY + ["--eval-only", ckpt])
    assert set(vit_only) == {"top1_visual", "top5_visual"}
    assert vit_only["top1_visual"] == pytest.approx(results["top1_visual"])


def test_fine_tune_from_torchvision_weights_file(tmp_path, capsys):
    """--pretrained NAME --weights-file FILE: the weights' own 224 px transform, a new 10-class
    head."""
    import torchvision

    path = tmp_path / "vit_b_32.pth"
    released = torchvision.models.vit_b_32()  # random init, same keys and shapes as the release
    torch.save(released.state_dict(), path)
    tiny = ["--dataset", "synthetic", "--max-per-class", "1", "--batch-size", "10", "--device",
            "cpu",
            "--pretrained", "vit_b_32:IMAGENET1K_V1", "--weights-file", str(path), "--epochs", "1"]
    train.main(tiny + ["--method", "vit", "--out-dir", str(tmp_path / "ft")])
    assert "10 classes, 224 px" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert ckpt["vit_config"]["num_classes"] == 10 and ckpt["vit_config"]["patch_size"] == 32
    assert ckpt["model"]["head.weight"].shape == (10, 768)
    # started from the file: one small step away from it, not from a fresh init
    start = released.state_dict()["encoder.layers.encoder_layer_0.mlp.0.weight"]
    assert (ckpt["model"]["blocks.0.mlp.fc1.weight"] - start).abs().max() < 1e-3
    # LLB keeps the released head, so the label set must match it
    with pytest.raises(ValueError,
                       match=r"vit_b_32:IMAGENET1K_V1 has 1000 classes but synthetic has 10"):
        train.main(tiny + ["--method", "llb", "--out-dir", str(tmp_path / "llb")])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["vit", "vit+llb"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch, method):
    """A crash right after epoch 1's checkpoint, then --resume, ends bit-identical to a straight
    run."""
    epochs = ["--epochs", "2", "--llb-epochs", "2"] if method == "vit+llb" else ["--epochs", "2"]
    # dropout draws from the RNG during training: the checkpoint's RNG state must be restored
    args = ["--method", method, *epochs, "--warmup-epochs", "0.5", "--dropout", "0.1"]
    straight = run(tmp_path, *args, out="straight")

    save, final = train.save_checkpoint, method.split("+")[-1]

    def killed_during_epoch_2(path, state):
        if state["kind"] == final and state["epoch"] == 2:
            raise Interrupt  # killed before epoch 2 was saved: last.pt still holds epoch 1
        save(path, state)

    monkeypatch.setattr(train, "save_checkpoint", killed_during_epoch_2)
    with pytest.raises(Interrupt):
        run(tmp_path, *args, out="resumed")
    monkeypatch.setattr(train, "save_checkpoint", save)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run(tmp_path, *args, "--resume", out="resumed")
    assert resumed == straight
    a, b = params(tmp_path / "straight" / "last.pt"), params(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_cpu_processes_share_the_data_and_keep_identical_parameters(tmp_path):
    """Both stages under DDP, LLB with the backbone unfrozen (the authors' code crashed there).
    The run ends only if the replicas' parameters are identical (distributed.check_replicas);
    disjoint shards are tested in test_data.py."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "train.py", *TINY, "--epochs", "1", "--llb-epochs", "1", "--unfreeze",
           "--gpus", "2", "--out-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.abspath(train.__file__)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "global batch 40 (2 x 20)" in done.stdout
    for stage_dir in (out / "vit", out):
        ckpt = torch.load(stage_dir / "last.pt", weights_only=True)
        # 120 images over 2 ranks of 20: 3 steps per epoch (one process alone would take 6)
        assert all(s["step"] == 3 for s in ckpt["optimizer"]["state"].values())
        assert ckpt["recipe"]["world_size"] == 2
    vit_state, llb_state = params(out / "vit" / "last.pt"), params(out / "last.pt")
    assert not torch.equal(vit_state["blocks.0.mlp.fc1.weight"],
                           llb_state["backbone.blocks.0.mlp.fc1.weight"])


def test_schedule_spans_the_whole_run():
    """Warmup, then cosine to the floor at the last step of the run (the authors' T_max stopped
    at 10 epochs of 70)."""
    lr = [train.lr_at(s, total=100, warmup=10, peak=1.0) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # decays monotonically
    assert lr[55] == pytest.approx(0.5, abs=0.02) and lr[99] < 1e-3
    floored = [train.lr_at(s, total=100, warmup=0, peak=1e-4, floor=5e-5) for s in range(101)]
    assert floored[0] == pytest.approx(1e-4) and floored[100] == pytest.approx(5e-5)
    assert floored[50] == pytest.approx(7.5e-5)


def test_fp16_scales_the_loss(tmp_path):
    """--amp fp16 trains through a real GradScaler (the authors' code built one, never used)."""
    run(tmp_path, "--method", "vit", "--epochs", "1", "--amp", "fp16")
    scaler = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 1 and scaler["_growth_tracker"] >= 1  # scaled, and stepped with it


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["--method", "llb"], "--method llb needs a backbone"),
    (["--pretrained", "vit_b_16:IMAGENET1K_V1", "--backbone", "x.pt"], "pick one"),
    (["--method", "vit", "--llb-epochs", "3"], "--llb-epochs/--llb-lr set the LLB stage"),
    (["--weights-file", "x.pth"], "--weights-file needs --pretrained"),
    (["--device", "cuda", "--gpus", "8"], "this machine has"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["--epochs", "-1"], "argument --epochs: must be >= 1, got -1"),
    (["--lr", "0"], "argument --lr: must be > 0, got 0.0"),
    (["--num-objects", "0"], "argument --num-objects: must be >= 1, got 0"),
    (["--num-objects", "1"], "num_objects must be >= 2"),
    (["--tau", "0"], "argument --tau: must be > 0, got 0.0"),
    (["--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
    (["--dropout", "1"], "argument --dropout: must be in [0, 1), got 1.0"),
    (["--recipe", "nope"], "argument --recipe: invalid choice: 'nope'"),
    (["--recipe", "swag-b16", "--method", "llb", "--backbone", "x.pt"], "pick one"),
    (["--resume", "--overwrite"], "pick one"),
    (["--gpus", "2"], "no CUDA GPU; to run 2 CPU processes (gloo), add --device cpu"),
])
def test_invalid_options_fail_at_parsing(argv, message, capsys):
    if "cuda" in argv and torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    if argv == ["--gpus", "2"] and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                                  monkeypatch):
    # Fake a blow-up in epoch 3 (6 steps an epoch): the loss turns NaN at its 4th step (step 15).
    calls = []
    real = F.cross_entropy

    def exploding(logits, *a, **k):
        calls.append(1)
        return real(logits, *a, **k) * (float("nan") if len(calls) == 16 else 1.0)

    monkeypatch.setattr(F, "cross_entropy", exploding)
    with pytest.raises(RuntimeError, match=r"non-finite loss \(nan\) at step 15 \(epoch 3\)"):
        run(tmp_path, "--method", "vit", "--epochs", "3")
    kept = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert kept["epoch"] == 2  # epoch 3 was not saved: the last good checkpoint stays
    assert all(v.isfinite().all() for v in kept["model"].values())


def test_checkpoint_from_another_model_or_class_count(tmp_path):
    run(tmp_path, "--method", "vit", "--epochs", "1")
    with pytest.raises(ValueError,
                       match=r"other options.*model: checkpoint 'micro', this command 'tiny'"):
        run(tmp_path, "--method", "vit", "--epochs", "1", "--resume", "--model", "tiny")
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    ckpt["vit_config"]["num_classes"] = 7
    torch.save(ckpt, tmp_path / "seven.pt")
    with pytest.raises(ValueError, match=r"holds a 7-class model \(trained on synthetic\) but "
                                         r"the dataset has 10"):
        run(tmp_path, "--method", "llb", "--backbone", str(tmp_path / "seven.pt"), out="llb")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ValueError,
                       match=r"weights\.pth is not a train\.py checkpoint.*--pretrained NAME"):
        run(tmp_path, "--method", "llb", "--backbone", str(tmp_path / "weights.pth"), out="llb2")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt not found"):
        train.main(TINY + ["--eval-only", str(tmp_path / "nope.pt")])


@pytest.mark.parametrize("name, decay_all", [("adamw", False), ("adam", True)])
def test_the_fused_optimizer_of_cuda_runs_take_the_same_steps(name, decay_all):
    """On CUDA build_optimizer asks for fused Adam(W), which no CPU run takes; PyTorch's fused
    kernels run on the CPU too, so run them here: the same steps as the unfused optimizer."""
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4)) for _ in "ab"]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [train.build_optimizer(list(m.parameters()), name=name, lr=1e-2,
                                        weight_decay=0.1, decay_all=decay_all,
                                        device=torch.device(kind))
                  for m, kind in zip(models, ("cpu", "cuda"))]
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults["fused"]
    for _ in range(3):
        x = torch.randn(5, 8)
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b)
