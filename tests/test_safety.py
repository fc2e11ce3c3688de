"""No run loses work or silently does something other than asked (train.py, util/checkpoint.py,
util/cli.py): the out-dir guard, resume and eval following the checkpoint, save-before-evaluate,
failed saves, unreadable files, and errors printed for people."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train
from util import checkpoint, cli, evaluate

REPO = os.path.dirname(os.path.abspath(train.__file__))
TINY = ["--dataset", "synthetic", "--max-per-class", "12", "--model", "micro", "--batch-size", "20",
        "--device", "cpu", "--num-objects", "16", "--method", "vit"]


def run(out, *extra):
    return train.main(TINY + ["--out-dir", str(out), *extra])


def test_an_existing_run_is_never_overwritten_by_accident(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, "--epochs", "1")
    before = {f: (out / f).read_bytes() for f in ("last.pt", "metrics.jsonl", "results.json")}
    with pytest.raises(ValueError, match=r"already holds a run \(.*last\.pt.*\); nothing was "
                                         r"changed\. Continue it with --resume, replace it with "
                                         r"--overwrite"):
        run(out, "--epochs", "1", "--lr", "0.01")
    assert all((out / f).read_bytes() == b for f, b in before.items())
    # --overwrite says what it replaces, and the new run's metrics are not mixed with the old
    run(out, "--epochs", "1", "--lr", "0.01", "--overwrite")
    assert "--overwrite: the new run has started; removing" in capsys.readouterr().out
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["recipe"]["lr"] == 0.01


class Stop(Exception):
    pass


def test_resume_follows_the_checkpoint_and_refuses_other_options(tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = train.save_checkpoint

    def stop_after_epoch_1(path, state):
        save(path, state)
        raise Stop

    monkeypatch.setattr(train, "save_checkpoint", stop_after_epoch_1)
    with pytest.raises(Stop):
        run(out, "--epochs", "2", "--lr", "0.002", "--seed", "3")
    monkeypatch.setattr(train, "save_checkpoint", save)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0\.002, this command 0\.005; seed: "
                                         r"checkpoint 3, this command 4"):
        run(out, "--resume", "--lr", "0.005", "--seed", "4")
    with pytest.raises(ValueError, match=r"max_per_class: checkpoint 12, this command 5"):
        run(out, "--resume", "--max-per-class", "5")
    # unset options come from the checkpoint: --epochs 2, --lr 0.002, --seed 3
    train.main(["--method", "vit", "--device", "cpu", "--out-dir", str(out), "--resume"])
    final = torch.load(out / "last.pt", weights_only=True)
    assert final["epoch"] == 2 and final["recipe"]["lr"] == 0.002 and final["recipe"]["seed"] == 3


def test_eval_only_uses_the_checkpoints_data_options(tmp_path, capsys):
    out = tmp_path / "run"
    trained = run(out, "--epochs", "1", "--max-per-class", "7")
    capsys.readouterr()
    again = train.main(["--eval-only", str(out / "last.pt"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "data options from" in printed and "max_per_class=7" in printed
    assert "(70 images, eval framing weights)" in printed  # 7 per class, not all; the framing
    assert again["top1_visual"] == pytest.approx(trained["top1_visual"])
    # a batch larger than the training split is fine: evaluation builds no training loader
    bigger = train.main(["--eval-only", str(out / "last.pt"), "--device", "cpu",
                         "--batch-size", "500"])
    assert bigger["top1_visual"] == pytest.approx(trained["top1_visual"])


def test_the_epoch_is_saved_before_it_is_evaluated(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise OSError("cannot read image file val/x.png")

    monkeypatch.setattr(evaluate, "evaluate", broken)
    with pytest.raises(OSError, match="val/x.png"):
        run(tmp_path / "run", "--epochs", "1")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1


def test_an_unwritable_out_dir_fails_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"cannot write to the output folder .*a_file/run"):
        run(tmp_path / "a_file" / "run", "--epochs", "1")


def test_a_failed_save_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1})

    def disk_full(state, f):
        open(f, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*last\.pt: disk full or "
                                      r"not writable"):
        checkpoint.save_checkpoint(path, {"epoch": 2})
    assert not (tmp_path / "last.tmp").exists()
    assert torch.load(path, weights_only=True) == {"epoch": 1}


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, "truncated"])
def test_an_unreadable_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(1000)}})
        content = path.read_bytes()[:500]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*bad\.pt: truncated, or not"):
        checkpoint.load_checkpoint(path)


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch, capsys):
    real, calls = train.train_epoch, []

    def interrupted_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "train_epoch", interrupted_in_epoch_2)
    argv = TINY + ["--epochs", "3", "--out-dir", str(tmp_path / "run")]
    assert train.entry(argv) == 130
    said = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'last.pt'} holds epoch 1; continue with: python train.py" in said
    assert said.rstrip().endswith("--resume")


def cli_run(*argv):
    return subprocess.run([sys.executable, "train.py", *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=dict(os.environ, LLB_DEBUG="0"))


def test_user_errors_are_one_paragraph_without_traceback(tmp_path):
    missing = ["--dataset", "folder", "--data-dir", str(tmp_path / "nope"), "--device", "cpu",
               "--out-dir", str(tmp_path / "run")]
    done = cli_run(*missing)
    assert done.returncode == 2
    assert done.stderr.startswith("error: folder: data root") and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Traceback" in cli_run(*missing, "--debug").stderr
    # two processes: the error is printed once, not once per process
    done = cli_run(*missing, "--gpus", "2", "--overwrite")
    assert done.returncode == 2 and done.stderr.count("error:") == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_error_messages_of_data_loader_workers_are_the_original_ones():
    wrapped = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal "
                           "Traceback (most recent call last):\n  File ...\nRuntimeError: cannot "
                           "read image file a.png (broken)")
    assert cli.message_of(wrapped) == "RuntimeError: cannot read image file a.png (broken)"
