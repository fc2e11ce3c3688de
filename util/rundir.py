"""A run's folder: one writer at a time, --overwrite that replaces only once the new run has
started, and no debris from a run that failed before its first checkpoint.

    with rundir.RunDir(out_dir, folders, resume=..., overwrite=...) as run:
        ...                 # build the data and the model
        run.started(model)  # --overwrite: only now the old run's files go
        ...                 # train

The lock is an exclusive flock(2) on the file <out-dir>/.lock, which names its holder (program,
process, host, since): a second training, analysis or --overwrite into that folder is refused
with that name. The kernel releases the lock when its process ends, however it ends (kill -9
and power loss included), so a lock is never stale, and on a filesystem shared by several hosts
(NFS) it holds across them. The file is removed on every exit. Under torchrun only global rank 0
takes it (it alone writes files); the other ranks wait for its verdict.
Note: flock is POSIX (Linux, macOS); where Python has no fcntl (Windows), runs are not locked.
"""
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import torch

from util import distributed
from util.checkpoint import load_checkpoint
from util.cli import message_of

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# The files a training stage writes into its folder (train.py), and those analyze.py writes
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "results.json", "curves.png")
ANALYSIS_FILES = ("analysis.json", "latent_objects.png", "latent_objects.txt",
                  "centroids_visual.png", "centroids_nonvisual.png")
ANALYSIS_PATTERNS = ("centroids_*.png", "pca*.png", "*_pca.png")  # pictures added later too
LOCK = ".lock"
# A checkpoint holds the model, Adam's two moments and the RNGs: about 3x the parameters; the
# atomic save needs its temporary copy beside last.pt and best.pt
CHECKPOINT_COPIES = 3


def for_training(args, folders: list[Path]) -> "RunDir":
    """The RunDir of this process of train.py: the processes that `--gpus N` starts neither
    lock nor guard (their parent did, and holds the lock); only rank 0 writes."""
    spawned = os.environ.get(distributed.SPAWNED) == "1"
    return RunDir(args.out_dir, folders, resume=args.resume, overwrite=args.overwrite,
                  lock=not spawned, guard=not spawned, writer=distributed.is_master())


def analysis_files(folder: Path) -> list[Path]:
    found = {folder / n for n in ANALYSIS_FILES if (folder / n).exists()}
    found |= {p for pattern in ANALYSIS_PATTERNS for p in folder.glob(pattern)}
    return sorted(found)


# ----------------------------------------------------------------------------- the lock


def acquire(folder: Path, program: str) -> int:
    """Take the lock <folder>/.lock (returns its open file) or raise RuntimeError naming the
    process that holds it."""
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RuntimeError(
                f"{folder} is in use by {holder.get('program')} (process {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('since')}); nothing was changed. Wait "
                f"for it to finish or pick another --out-dir.") from None
        if _same_file(path, fd):
            break
        os.close(fd)  # its last holder removed the file as we opened it: take the new one
    me = {"pid": os.getpid(), "host": socket.gethostname(), "program": program,
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(me) + "\n").encode())
    return fd


def _holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0))
    except ValueError:  # being written this instant
        return {}


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def release(folder: Path, fd: int | None) -> None:
    """Remove and unlock our own lock (removed first: no one can take the old file after)."""
    if fd is not None:
        (folder / LOCK).unlink(missing_ok=True)
        os.close(fd)


# ----------------------------------------------------------------------------- the run folder


class RunDir:
    """The out-dir of a training (guard=True) or analysis (guard=False), for one process.

    lock: take <out_dir>/.lock (False in the processes train.py --gpus N starts: their parent
    holds it; and on every rank but 0). guard: refuse an existing run without --resume or
    --overwrite. writer: this process writes the files (rank 0)."""

    def __init__(self, out_dir, folders: list[Path], *, resume: bool = False,
                 overwrite: bool = False, program: str = "train.py", lock: bool = True,
                 guard: bool = True, writer: bool = True):
        self.out_dir = Path(out_dir)
        self.folders = [Path(f) for f in folders]
        self.resume = resume
        self.overwrite = overwrite
        self.program = program
        self.lock = lock
        self.guard = guard
        self.writer = writer
        self.lock_fd = None
        self.created = []  # folders this run created (removed again if left empty)
        self.before = set()  # run files that were there before (never removed on failure)
        self.pending = []  # --overwrite: the old run's files, removed by started()
        self.owned = False  # the lock is ours (or our parent's): we may clean up

    def __enter__(self) -> "RunDir":
        problem = None
        if self.writer:
            try:
                self._enter()
            except BaseException as err:
                self._cleanup(failed=True)
                problem = err
        # under torchrun the other ranks wait for rank 0's verdict on the folder
        verdict = distributed.from_master(None if problem is None else message_of(problem))
        if problem is not None and (distributed.is_master() or message_of(problem) != verdict):
            raise problem  # rank 0's, or another rank's own (printed with its rank)
        if verdict is not None:  # rank 0 says it
            raise distributed.EveryRank(f"rank 0 refused the out-dir: {verdict}")
        return self

    def _enter(self) -> None:
        if self.guard and self.resume and not any((d / "last.pt").exists() for d in self.folders):
            raise ValueError(f"--resume: there is no run to resume in {self.out_dir} (no "
                             f"last.pt in {', '.join(map(str, self.folders))}); nothing was "
                             f"changed. Check --out-dir, or drop --resume to start a new run.")
        for folder in sorted({self.out_dir, *self.folders}, key=lambda p: len(p.parts)):
            if not folder.exists():
                self.created.append(folder)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / ".write_test"
                probe.write_bytes(b"0" * 4096)
                probe.unlink()
            except OSError as err:
                raise OSError(f"cannot write to the output folder {folder} ({err.strerror}): "
                              f"pick another --out-dir, or free space / fix its permissions"
                              ) from err
        if self.lock and fcntl is not None:
            self.lock_fd = acquire(self.out_dir, self.program)
        self.owned = True  # from here on, the run files in these folders are this run's
        found = self.run_files()  # now that no one else can write here
        self.before = set(found)
        if self.guard and found and not (self.resume or self.overwrite):
            held = "; ".join(f"{d}: " + ", ".join(f.name for f in found if f.parent == d)
                             for d in self.folders if any(f.parent == d for f in found))
            raise ValueError(f"{self.out_dir} already holds a run ({held}); nothing was "
                             f"changed. Continue it with --resume, replace it with "
                             f"--overwrite, or pick another --out-dir.")
        if self.overwrite:  # also in the processes of --gpus N: rank 0 removes them
            self.pending = found + [f for d in self.folders for f in analysis_files(d)]

    def run_files(self) -> list[Path]:
        return [d / n for d in self.folders for n in RUN_FILES if (d / n).exists()]

    def started(self, model: torch.nn.Module | None = None) -> None:
        """The new run has built its data and model: check the disk has room for its
        checkpoints, then (--overwrite) remove the old run's files. Idempotent."""
        if not self.writer:
            return
        if model is not None:
            need = CHECKPOINT_COPIES * 3 * sum(p.numel() * p.element_size()
                                               for p in model.parameters())
            free = shutil.disk_usage(self.out_dir).free + sum(
                f.stat().st_size for f in self.pending if f.exists())
            if free < need:
                raise OSError(f"{self.out_dir} has {free / 2**20:.0f} MiB free but this run's "
                              f"checkpoints need about {need / 2**20:.0f} MiB; nothing was "
                              f"changed. Free space or pick another --out-dir.")
        if self.pending:
            print(f"--overwrite: the new run has started; removing the old run's "
                  f"{', '.join(map(str, self.pending))}")
            for f in self.pending:
                f.unlink(missing_ok=True)
            self.pending = []
        self.before = set()

    def __exit__(self, kind, err, tb) -> None:
        if self.writer:
            self._cleanup(failed=kind is not None)

    def _cleanup(self, *, failed: bool) -> None:
        """On failure: remove what this run wrote into a folder where it saved no checkpoint
        (metrics.jsonl would block a rerun), then the folders it created if empty."""
        try:
            if failed and self.owned:
                for d in self.folders:
                    if (d / "last.pt").exists():
                        continue
                    for name in RUN_FILES:
                        f = d / name
                        if f.exists() and f not in self.before:
                            f.unlink(missing_ok=True)
        finally:
            release(self.out_dir, self.lock_fd)
            self.lock_fd = None
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass


def interrupted(folder: Path, argv) -> str:
    """What Ctrl-C kept, and the command that continues (train.py)."""
    command = " ".join(["python train.py", *(sys.argv[1:] if argv is None else argv)])
    if not (folder / "last.pt").exists():
        return f"No epoch of {folder} was finished, so nothing was saved there."
    kept = load_checkpoint(folder / "last.pt", mmap=True)["epoch"]
    resume = "" if "--resume" in command else " --resume"
    return f"{folder / 'last.pt'} holds epoch {kept}; continue with: {command}{resume}"
