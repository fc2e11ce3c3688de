"""Data-parallel training with PyTorch DDP: start N processes, join the group, reduce numbers.

`train.py --gpus N` starts N processes on this machine as torchrun would (`launch`); under
torchrun (multi-node) the processes already exist. Either way each process calls `setup`, which
reads RANK / WORLD_SIZE / LOCAL_RANK and joins the process group (NCCL on CUDA, gloo on CPU).
"""
import datetime
import logging
import os
import socket
import sys

import torch
import torch.distributed as dist

SPAWNED = "LLB_SPAWNED"  # set in the processes `launch` starts (their parent holds the lock)
# What torchrun (or `launch`) sets in each process; one without the others is a mistake
VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
INIT_TIMEOUT = "LLB_INIT_TIMEOUT"  # seconds to wait for every process to join (default 300)


def launch(main, argv: list, processes: int) -> None:
    """Run main(argv) in `processes` processes on this machine; exit as the first failure."""
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the other processes are stopped when one fails: that is expected, not worth a warning
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    try:
        torch.multiprocessing.start_processes(_worker, args=(main, argv, processes, port),
                                              nprocs=processes, start_method="spawn")
    except torch.multiprocessing.ProcessExitedException as err:
        # rank 0 has printed the reason; the others stopped quietly (see _worker)
        sys.exit(err.exit_code if err.exit_code > 0 else 1)


def _worker(rank: int, main, argv: list, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{SPAWNED: "1"})
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # CPU ranks share the cores
    code = main(argv)  # main prints a user error once (rank 0) and returns its exit code
    if isinstance(code, int) and code:
        sys.exit(code)


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
    device = torch.device(f"cuda:{local}" if device_type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seconds = float(os.environ.get(INIT_TIMEOUT, "300"))
    if rank == 0 and SPAWNED not in os.environ:  # torchrun or variables set by hand
        print(f"joining a process group of {world} at {os.environ['MASTER_ADDR']}:"
              f"{os.environ['MASTER_PORT']} (waiting up to {seconds:g} s for the others)",
              file=sys.stderr)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=seconds))
    except Exception as err:  # a rendezvous timeout or refused connection: a RuntimeError kin
        where = ", ".join(f"{v}={os.environ[v]}" for v in VARIABLES)
        raise RuntimeError(f"process {rank} of {world} could not join the process group within "
                           f"{seconds:g} s ({where}): the other processes did not start or "
                           f"cannot reach MASTER_ADDR:MASTER_PORT. Start them all with torchrun "
                           f"(or train.py --gpus N), or unset these variables for one process; "
                           f"{INIT_TIMEOUT} sets the wait ({str(err).splitlines()[0][:200]})"
                           ) from err
    return rank, world, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_master() -> bool:
    """Rank 0 (or a single process): the process that prints and writes files."""
    return int(os.environ.get("RANK", "0")) == 0


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
