"""No run lost, no traceback (util/rundir.py and the checks before any work): the out-dir's lock
on every launch path, --overwrite that replaces only a started run, torchrun, wrong kinds of
files, options refused before the out-dir exists, and analyses that are not replaced by accident.
"""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import analyze
import data
import make_assignment
import train
from inputs import pretrained
from util import cli, rundir

REPO = Path(train.__file__).resolve().parent
TINY = ["--dataset", "synthetic", "--max-per-class", "12", "--model", "micro", "--batch-size", "20",
        "--device", "cpu", "--num-objects", "16", "--method", "vit", "--epochs", "1"]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def code(program, argv) -> int:
    """The exit code of a program's command line (argparse's errors included)."""
    try:
        return cli.run(program, argv)
    except SystemExit as stop:
        return stop.code


def command(*argv, env=None, timeout=300):
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=dict(os.environ, LLB_DEBUG="0", **(env or {})))


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    """A finished one-epoch run (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("old") / "run"
    train.main(TINY + ["--out-dir", str(out)])
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


# ----------------------------------------------------------------------------- LOSS


def test_overwrite_keeps_the_old_run_until_the_new_one_has_started(old_run, tmp_path, capsys,
                                                                  monkeypatch):
    out = copy_of(old_run, tmp_path)
    (out / "latent_objects.png").write_bytes(b"old picture")
    (out / "analysis.json").write_text("{}")
    before = hashes(out)
    # a typo in --data-dir: the new run cannot start, the old one is untouched
    typo = ["--dataset", "folder", "--data-dir", str(tmp_path / "nope"), "--device", "cpu",
            "--method", "vit", "--out-dir", str(out), "--overwrite"]
    assert code(train.main, typo) == 2
    assert hashes(out) == before
    # a disk without room for the checkpoints: found before training, the old run untouched
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 1))
    with pytest.raises(OSError, match=r"MiB free but this run's checkpoints need"):
        train.main(TINY + ["--out-dir", str(out), "--overwrite"])
    assert hashes(out) == before
    monkeypatch.undo()
    # a run that starts replaces the old files, the old analysis pictures included
    capsys.readouterr()
    train.main(TINY + ["--out-dir", str(out), "--overwrite", "--lr", "0.01"])
    said = capsys.readouterr().out
    assert "--overwrite: the new run has started; removing the old run's" in said
    assert not (out / "latent_objects.png").exists() and not (out / "analysis.json").exists()
    assert torch.load(out / "last.pt", weights_only=True)["recipe"]["lr"] == 0.01
    assert not (out / rundir.LOCK).exists()


def test_a_second_training_into_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "run"
    # stderr to a file, not a pipe: nobody reads a pipe while the run's progress bars fill it,
    # and a child blocked writing to a full pipe never gets to handle Ctrl-C
    log = tmp_path / "first.stderr"
    with open(log, "w") as stderr:
        # Ctrl-C as in a terminal, also when pytest itself runs in the background (`... &`),
        # where the shell hands on SIGINT ignored and Python keeps it so
        first = subprocess.Popen([sys.executable, "train.py", *TINY, "--epochs", "500",
                                  "--out-dir", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=stderr,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(600):  # the lock is taken before the data is built
            if (out / rundir.LOCK).exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert (out / rundir.LOCK).exists(), log.read_text() if first.poll() else "no lock"
        for extra in ([], ["--overwrite"], ["--lr", "0.01"]):
            with pytest.raises(RuntimeError, match=rf"{out} is in use by train.py \(process "
                                                   rf"{first.pid} on .*\); nothing was changed"):
                train.main(TINY + ["--out-dir", str(out), *extra])
    finally:
        first.send_signal(signal.SIGINT)  # Ctrl-C: the lock goes with the process
        assert first.wait(timeout=120) == 130
    assert not (out / rundir.LOCK).exists()


def test_a_lock_file_left_behind_is_free_and_a_held_one_names_its_holder(tmp_path):
    # a process killed with -9 leaves its lock file, but the kernel released its lock
    (tmp_path / rundir.LOCK).write_text('{"pid": 1, "host": "elsewhere", "program": '
                                        '"train.py", "since": "then"}')
    fd = rundir.acquire(tmp_path, "analyze.py")
    assert '"program": "analyze.py"' in (tmp_path / rundir.LOCK).read_text()
    # held (here by another process, as across hosts on NFS): refused, naming the holder
    (tmp_path / "other").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({str(tmp_path / "other" / rundir.LOCK)!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b'{{"pid": 7, "host": "node2", "program": "train.py", "since": "now"}}')
print("held", flush=True)
time.sleep(60)"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=r"in use by train.py \(process 7 on node2, since "
                                               r"now\); nothing was changed"):
            rundir.acquire(tmp_path / "other", "train.py")
    finally:
        holder.kill()
        holder.wait()
    rundir.release(tmp_path, fd)
    assert not (tmp_path / rundir.LOCK).exists()
    rundir.release(tmp_path / "other", rundir.acquire(tmp_path / "other", "train.py"))


def test_torchrun_on_a_new_and_on_an_existing_out_dir(tmp_path):
    out = tmp_path / "new" / "run"
    argv = [TORCHRUN, "--nproc-per-node", "2", "train.py", *TINY, "--out-dir", str(out)]
    done = command(*argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(out / "last.pt", weights_only=True)["recipe"]["world_size"] == 2
    before = hashes(out)
    done = command(*argv, "--lr", "0.01")  # no --resume / --overwrite: refused, nothing changed
    assert done.returncode != 0
    assert done.stderr.count(f"error: {out} already holds a run") == 1, done.stderr[-2000:]
    assert 'train.py", line' not in done.stderr  # no traceback of ours (torchrun adds its own)
    assert hashes(out) == before


# ----------------------------------------------------------------------------- CRASH


def test_process_variables_set_by_hand_are_an_error_not_a_hang(tmp_path):
    argv = [sys.executable, "train.py", *TINY, "--out-dir", str(tmp_path / "run")]
    done = command(*argv, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert done.returncode == 2 and "not LOCAL_RANK, MASTER_ADDR, MASTER_PORT" in done.stderr
    everything = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": "29517", "LLB_INIT_TIMEOUT": "3"}
    done = command(*argv, env=everything, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "could not join the process group within 3 s (RANK=0, WORLD_SIZE=2" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def wrong_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / ("bad.safetensors" if kind == "safetensors" else "bad.pt")
    good = dict(kind="vit", vit_config={}, model={}, recipe={})
    if kind == "text":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    elif kind == "safetensors":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    else:
        obj = {"state_dict": {"w": torch.zeros(2)}, "tensor": torch.zeros(3), "list": [1, 2],
               "no_model": {k: v for k, v in good.items() if k != "model"}}[kind]
        torch.save(obj, path)
    return path


@pytest.mark.parametrize("kind", ["state_dict", "tensor", "list", "no_model", "text"])
def test_every_wrong_kind_of_checkpoint_is_one_paragraph(tmp_path, kind, capsys):
    path = wrong_file(tmp_path, kind)
    out = tmp_path / "run"
    uses = {"eval": (train.main, ["--eval-only", str(path), "--device", "cpu"]),
            "analyze": (analyze.main, [str(path), "--device", "cpu"]),
            "backbone": (train.main, ["--method", "llb", "--backbone", str(path), "--device",
                                      "cpu", "--out-dir", str(out)])}
    for use, (program, argv) in uses.items():
        capsys.readouterr()
        assert code(program, argv) == 2, use
        said = capsys.readouterr().err
        assert said.startswith("error: ") and str(path) in said, (use, said)
        assert "git lfs pull" in said if kind == "text" else "train.py checkpoint" in said
    # --resume on a last.pt that is not a checkpoint
    out.mkdir()
    shutil.copy(path, out / "last.pt")
    assert code(train.main, TINY + ["--out-dir", str(out), "--resume"]) == 2
    assert os.listdir(out) == ["last.pt"]


@pytest.mark.parametrize("kind", ["safetensors", "tensor", "text"])
def test_a_wrong_weights_file_is_a_value_error(tmp_path, kind):
    path = wrong_file(tmp_path, kind)
    with pytest.raises(ValueError, match=rf"{path}"):
        pretrained.load("vit_b_16:IMAGENET1K_V1", weights_file=str(path), num_classes=10)


@pytest.mark.parametrize("argv", [["--warmup-epochs", "inf"], ["--lr", "inf"], ["--tau", "inf"],
                                  ["--warmup-epochs", "1e308"],
                                  ["--diversity-weight", "inf"], ["--max-per-class", "100000000"],
                                  ["--resume"], "data_dir", "missing"],
                         ids=["warmup_inf", "lr_inf", "tau_inf", "warmup_1e308", "diversity_inf",
                              "max_per_class_1e8", "resume_nothing", "data_dir", "missing"])
def test_options_are_refused_before_the_out_dir_exists(tmp_path, argv, capsys):
    out = tmp_path / "run"
    if argv == "data_dir":  # the synthetic set reads no files: --data-dir would be ignored
        argv = ["--data-dir", str(tmp_path)]
    if argv == "missing":
        argv = ["--dataset", "folder", "--data-dir", str(tmp_path / "nope")]
    start = time.time()
    assert code(train.main, TINY + ["--out-dir", str(out), *argv]) == 2
    assert time.time() - start < 60 and not out.exists()
    assert "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- SILENT and LATE


def classes_folder(root: Path, names) -> Path:
    for split in ("train", "val"):
        for c, name in enumerate(names):
            for i in range(4):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (40 * c, 9 * i, 90)).save(root / split / name /
                                                                      f"{i}.png")
    return root


def test_resume_refuses_other_classes(tmp_path):
    out = tmp_path / "run"
    mine = ["--dataset", "folder", "--image-size", "32", "--model", "micro", "--patch-size", "8",
            "--batch-size", "4", "--device", "cpu", "--method", "vit", "--out-dir", str(out)]
    train.main(mine + ["--data-dir", str(classes_folder(tmp_path / "a", ["cat", "dog"])),
                       "--epochs", "1"])
    other = classes_folder(tmp_path / "b", ["ant", "bee"])
    before = hashes(out)
    with pytest.raises(ValueError, match=r"trained on other classes .*0: 'cat' -> 'ant'"):
        train.main(mine + ["--data-dir", str(other), "--resume"])
    assert hashes(out) == before


def test_a_broken_link_in_an_image_folder_is_reported(tmp_path):
    root = classes_folder(tmp_path / "f", ["cat", "dog"])
    (root / "train" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(FileNotFoundError, match=r"cat holds 1 broken symbolic link.*gone\.png"):
        data.build_datasets("folder", str(root), image_size=32)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    def corrupt(*a, **k):
        raise RuntimeError("cannot read image file train/cat/3.png (broken data stream)")

    out = tmp_path / "run"
    monkeypatch.setattr(train, "train_epoch", corrupt)
    with pytest.raises(RuntimeError, match="broken data stream"):
        train.main(TINY + ["--out-dir", str(out)])
    assert not out.exists()  # no metrics.jsonl to block the rerun, no empty folder
    monkeypatch.undo()
    train.main(TINY + ["--out-dir", str(out)])  # the rerun needs no --overwrite
    assert (out / "last.pt").exists()


@pytest.fixture(scope="module")
def llb_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llb") / "run"
    train.main(TINY[:-4] + ["--method", "vit+llb", "--epochs", "1", "--llb-epochs", "1",
                            "--out-dir", str(out)])
    return out


def test_an_analysis_is_not_replaced_with_other_options(llb_run, tmp_path, monkeypatch):
    ckpt = str(llb_run / "last.pt")
    analyze.main([ckpt, "--device", "cpu"])
    analyze.main([ckpt, "--device", "cpu"])  # the same options: replaced, no question
    before = hashes(llb_run)
    with pytest.raises(ValueError, match=r"already holds an analysis with other options "
                                         r"\(max_per_class: 12 there, 1 now\); nothing"):
        analyze.main([ckpt, "--device", "cpu", "--max-per-class", "1"])
    assert hashes(llb_run) == before
    small = analyze.main([ckpt, "--device", "cpu", "--max-per-class", "1", "--out-dir",
                          str(tmp_path / "small")])
    assert small["val_images"] == 10 and (tmp_path / "small" / "analysis.json").exists()
    # an unwritable --out-dir fails before the pass over the data
    monkeypatch.setattr(analyze, "collect", lambda *a, **k: pytest.fail("analysed"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError, match=r"cannot write to the output folder .*a_file"):
        analyze.main([ckpt, "--device", "cpu", "--out-dir", str(tmp_path / "a_file" / "x")])


def test_the_student_copy_stays_outside_the_repository(tmp_path, monkeypatch, capsys):
    inside = REPO / "course_probe"
    with pytest.raises(SystemExit):
        make_assignment.main(["--steps", "1", "--out", str(inside)])
    assert "inside the repository" in capsys.readouterr().err and not inside.exists()

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system", str(tmp_path / "copy" / "vit.py"))

    monkeypatch.setattr(make_assignment.shutil, "copy2", read_only)
    code = make_assignment.main(["--steps", "1", "--out", str(tmp_path / "copy")])
    assert code == 2 and not (tmp_path / "copy").exists()  # main's exit status
    assert "cannot write the copy" in capsys.readouterr().err
