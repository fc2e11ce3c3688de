"""Data-parallel training with PyTorch DDP: start N processes, join the group, reduce numbers.

`train.py --gpus N` starts N processes on this machine as torchrun would (`launch`); under
torchrun (multi-node) the processes already exist. Either way each process calls `setup`, which
reads RANK / WORLD_SIZE / LOCAL_RANK and joins the process group (NCCL on CUDA, gloo on CPU).
Two waits, two timeouts: joining the group (LLB_INIT_TIMEOUT, 300 s: every process started),
then each collective (LLB_COLLECTIVE_TIMEOUT, 1800 s: the slowest rank, e.g. compiling the model
or rank 0 writing a checkpoint, must reach it in time).
"""
import contextlib
import datetime
import hashlib
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

SPAWNED = "LLB_SPAWNED"  # set in the processes `launch` starts (their parent holds the lock)
ERRORS = "LLB_ERRORS"  # the folder where the processes of `launch` leave their user errors
# What torchrun (or `launch`) sets in each process; one without the others is a mistake
VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
INIT_TIMEOUT = "LLB_INIT_TIMEOUT"  # seconds to wait for every process to join
COLLECTIVE_TIMEOUT = "LLB_COLLECTIVE_TIMEOUT"  # seconds a collective waits for the slowest rank
# Their defaults. Note: NCCL's own collective timeout is 600 s; `torch.compile` of a large model
# on one rank, or rank 0 saving a checkpoint, may take longer, so ours is 30 minutes.
TIMEOUTS = {INIT_TIMEOUT: 300.0, COLLECTIVE_TIMEOUT: 1800.0}
DIGEST_BYTES = 1 << 20  # check_same_files hashes the first and the last MiB of a file


class EveryRank(RuntimeError):
    """An error that every rank raises alike, after a collective agreed on it: rank 0 prints it
    (util/cli.py), the others stay quiet instead of printing it N times."""


def launch(main, argv: list, processes: int) -> None:
    """Run main(argv) in `processes` processes on this machine; exit as the first failure."""
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the other processes are stopped when one fails: that is expected, not worth a warning
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as errors:
        try:
            torch.multiprocessing.start_processes(
                _worker, args=(main, argv, processes, port, errors), nprocs=processes,
                start_method="spawn")
        except torch.multiprocessing.ProcessExitedException as err:
            # the first to fail stopped the others; say each distinct error once
            first = err.error_index
            said = {}  # error -> the ranks that left it (util/cli.py), the first failed first
            for rank in sorted(range(processes), key=lambda r: r != first):
                path = Path(errors, str(rank))
                if path.exists():
                    said.setdefault(path.read_text(), []).append(str(rank))
            for text, ranks in said.items():
                print(f"[rank {', '.join(ranks)}/{processes}] {text}", file=sys.stderr)
            sys.exit(err.exit_code if err.exit_code > 0 else 1)


def _worker(rank: int, main, argv: list, world: int, port: int, errors: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      **{SPAWNED: "1", ERRORS: errors})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # CPU ranks share the cores
    code = main(argv)  # main leaves a user error to `launch` (hand_over), returns the exit code
    if isinstance(code, int) and code:
        sys.exit(code)


def hand_over(text: str) -> bool:
    """In a process of `launch`: leave a user error for it to print (once, however many ranks
    fail alike). False elsewhere: the caller prints it."""
    if ERRORS not in os.environ:
        return False
    Path(os.environ[ERRORS], os.environ["RANK"]).write_text(text)
    return True


def environment_problem() -> str | None:
    """What is wrong with the process-group variables: some set by hand without the others."""
    given = [v for v in VARIABLES if v in os.environ]
    if not given or ("RANK" not in os.environ and "WORLD_SIZE" not in os.environ):
        return None  # one process (MASTER_ADDR alone is harmless)
    missing = [v for v in VARIABLES if v not in os.environ]
    if missing:
        return (f"{', '.join(given)} set in the environment but not {', '.join(missing)}: a "
                f"process group needs all of {', '.join(VARIABLES)}. Start several processes "
                f"with `torchrun --nproc-per-node N train.py ...` or `train.py --gpus N` (which "
                f"set them), or unset {', '.join(given)} for one process.")
    bad = [v for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
           if not os.environ[v].isdigit()]
    if bad or int(os.environ["RANK"]) >= int(os.environ["WORLD_SIZE"]):
        values = ", ".join(f"{v}={os.environ[v]!r}" for v in VARIABLES)
        return (f"the process-group variables are not consistent ({values}): RANK must be "
                f"below WORLD_SIZE, and all but MASTER_ADDR whole numbers")
    return None


def seconds_of(name: str) -> float:
    """A timeout from the environment (TIMEOUTS: the variable and its default), checked."""
    text = os.environ.get(name, str(TIMEOUTS[name]))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise ValueError(f"{name}={text!r}: expected a number of seconds > 0 (default "
                         f"{TIMEOUTS[name]:g}); set it so, or unset it")
    return value


def cuda_device(local: int) -> torch.device:
    """The GPU of local rank `local` among those this process sees: its own when every rank sees
    all the node's GPUs (torchrun, --gpus N), the only one when the launcher gives each rank one
    (CUDA_VISIBLE_DEVICES per task, as Slurm's --gpus-per-task)."""
    visible = torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda:0")
    if local < visible:
        return torch.device(f"cuda:{local}")
    shown = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    raise RuntimeError(f"local rank {local} but this process sees {visible} GPU(s) "
                       f"(CUDA_VISIBLE_DEVICES={shown}): start at most {visible} processes per "
                       f"node (torchrun --nproc-per-node {max(visible, 1)}), or give each "
                       f"process its own GPU, or add --device cpu")


def setup(device_type: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group under torchrun or --gpus N."""
    problem = environment_problem()
    if problem:
        raise RuntimeError(problem)
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device_type)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    device = cuda_device(local) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seconds = seconds_of(INIT_TIMEOUT)
    collective = seconds_of(COLLECTIVE_TIMEOUT)
    if rank == 0 and SPAWNED not in os.environ:  # torchrun or variables set by hand
        print(f"joining a process group of {world} at {os.environ['MASTER_ADDR']}:"
              f"{os.environ['MASTER_PORT']} (waiting up to {seconds:g} s for the others)",
              file=sys.stderr)
    try:
        # the join: every process reaches MASTER_ADDR:MASTER_PORT within LLB_INIT_TIMEOUT (the
        # rendezvous init_process_group would run, under torchrun its agent's store included)
        store, _, _ = next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=seconds)))
        store = dist.PrefixStore("default_pg", store)  # the keys' prefix of init_process_group
        # then every collective waits up to LLB_COLLECTIVE_TIMEOUT
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store,
                                rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=collective))
    except Exception as err:  # a rendezvous timeout or refused connection: a RuntimeError kin
        where = ", ".join(f"{v}={os.environ[v]}" for v in VARIABLES)
        raise RuntimeError(f"process {rank} of {world} could not join the process group within "
                           f"{seconds:g} s ({where}): the other processes did not start or "
                           f"cannot reach MASTER_ADDR:MASTER_PORT. Start them all with torchrun "
                           f"(or train.py --gpus N), or unset these variables for one process; "
                           f"{INIT_TIMEOUT} sets the wait ({str(err).splitlines()[0][:200]})"
                           ) from err
    store.set_timeout(datetime.timedelta(seconds=collective))  # NCCL's first collective uses it
    return rank, world, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def group(device_type: str):
    """`with group("cuda") as (rank, world, device):` setup(), and leave the group when the
    block succeeds or raises EveryRank: every rank is there to leave it together. Note: not
    after another error: the other ranks may be gone, and with them the store that
    destroy_process_group waits on (torch 2.4 then hangs there); the process's exit frees what
    it held, and the launcher (--gpus N, torchrun) stops the other ranks. A process that exits
    still in a gloo group may abort ("terminate called without an active exception") as its
    peer leaves: seen once in CI, rank 1 of a refused LLB stage killed by SIGABRT."""
    joined = setup(device_type)
    try:
        yield joined
    except EveryRank:
        teardown()
        raise
    teardown()


def rank_of() -> tuple[int, int]:
    """(rank, world size) of this process, from the variables torchrun or `launch` set."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_master() -> bool:
    """Rank 0 (or a single process): the process that prints and writes files."""
    return rank_of()[0] == 0


def all_sum(values: list, device: torch.device) -> list:
    """Element-wise sum of a list of numbers over all processes (itself without a group)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def from_master(obj):
    """Rank 0's `obj` on every rank (itself without a group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_files(paths: list) -> None:
    """Every rank reads these files (the checkpoint it resumes, the ViT under LLB), which rank 0
    may have written on its node's disk only. Compare what each rank sees of each (missing, or
    its size and a digest of its first and last MiB) and stop every rank alike if they differ:
    resuming at another epoch, or from another model, would mismatch the collectives later."""
    if not dist.is_initialized() or not paths:
        return
    mine = (socket.gethostname(), [_seen(Path(p)) for p in paths])
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, mine)
    for i, path in enumerate(paths):
        if len({files[i] for _, files in seen}) == 1:
            continue
        ranks = {}  # (host, what it sees) -> its ranks, in rank order
        for rank, (host, files) in enumerate(seen):
            ranks.setdefault((host, files[i]), []).append(str(rank))
        said = "; ".join(f"rank {', '.join(r)} on {host}: " + (
            "missing" if view is None else f"{view[0]:,} bytes, digest {view[1]}")
            for (host, view), r in ranks.items())
        raise EveryRank(f"the ranks see different files at {path} ({said}). Every rank reads "
                        f"it, and only rank 0 writes the out-dir: put --out-dir (and any "
                        f"--backbone, --weights-file) on a folder all nodes share, or copy "
                        f"{path} to the same path on every node, then run the command again")


def _seen(path: Path) -> tuple | None:
    """(size, digest of the first and the last DIGEST_BYTES) of a file, None when missing."""
    if not path.is_file():
        return None
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(DIGEST_BYTES))
        f.seek(max(0, size - DIGEST_BYTES))
        digest.update(f.read(DIGEST_BYTES))
    return size, digest.hexdigest()[:12]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def check_replicas(model: torch.nn.Module) -> None:
    """DDP must keep the replicas identical: check it rather than assume it (one number per
    rank: a weighted sum of every parameter)."""
    if not dist.is_initialized():
        return
    mine = sum(float(p.detach().double().sum()) * (i + 1) for i, p in enumerate(model.parameters()))
    fingerprints = [None] * dist.get_world_size()
    dist.all_gather_object(fingerprints, mine)
    if len(set(fingerprints)) > 1:
        raise RuntimeError(f"DDP replicas diverged: parameter fingerprints per rank {fingerprints}")
