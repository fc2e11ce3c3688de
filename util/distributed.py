"""Data-parallel training with PyTorch DDP: start N processes, join the group, reduce numbers.

`train.py --gpus N` starts N processes on this machine as torchrun would (`launch`); under
torchrun (multi-node) the processes already exist. Either way each process calls `setup`, which
reads RANK / WORLD_SIZE / LOCAL_RANK and joins the process group (NCCL on CUDA, gloo on CPU).
"""
import logging
import os
import socket
import sys

import torch
import torch.distributed as dist

USER_ERROR = 2  # exit code of a process that stopped on bad input (train.py's cli)


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
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # CPU ranks share the cores
    code = main(argv)  # main prints a user error once (rank 0) and returns its exit code
    if isinstance(code, int) and code:
        sys.exit(code)


def setup(device_type: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group under torchrun or --gpus N."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device_type)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    device = torch.device(f"cuda:{local}" if device_type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
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
