"""What only several processes show (CPU, gloo): each test starts 2 or 3 ranks with
distributed.launch, as `train.py --gpus N` does, and the ranks write what they saw to files.
The end-to-end runs of train.py under DDP are in test_train.py."""
import os
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

import data
import llb
import recipes
import train
import vit
from util import cli, distributed, evaluate

ROOT = Path(train.__file__).parent


def launch(fn, tmp_path, world: int = 2, *args) -> None:
    """fn(tmp_path, rank, *args) on `world` ranks of a gloo process group."""
    distributed.launch(_joined, [fn, str(tmp_path), *args], world)


def _joined(argv) -> None:
    fn, folder, *args = argv
    rank, _, _ = distributed.setup("cpu")
    fn(Path(folder), rank, *args)
    distributed.teardown()  # after a success only, as distributed.group


def keep(folder, rank, value, name: str = "result") -> None:
    torch.save(value, folder / f"{name}{rank}.pt")


def seen(folder, name: str = "result", world: int = 2) -> list:
    """What each rank kept under `name`, in rank order."""
    missing = [r for r in range(world) if not (folder / f"{name}{r}.pt").exists()]
    if missing:
        launched = folder / "launch.txt"
        pytest.fail(f"rank(s) {missing} kept nothing for {name}: "
                    f"{launched.read_text()[-2000:] if launched.exists() else ''}")
    return [torch.load(folder / f"{name}{r}.pt", weights_only=False) for r in range(world)]


def _scenarios(folder, rank) -> None:
    """The scenarios that share one process group (starting one costs seconds), in turn; each
    keeps what it saw, or its error (the last one may end the group: gloo aborts on a
    collective whose sizes differ between ranks)."""
    for name, scenario in (("dropout", _dropout_masks), ("same_files", _files_of_each_node),
                           ("node_files", _files_of_each_node), ("two_nodes", _downloads),
                           ("one_node", _downloads), ("evaluation", _evaluate_one_image)):
        try:
            keep(folder, rank, scenario(folder / name, rank, name), name)
        except Exception as err:
            keep(folder, rank, f"{type(err).__name__}: {err}", name)
        distributed.barrier()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The folder where 2 ranks kept what each scenario showed them."""
    folder = tmp_path_factory.mktemp("ranks")
    try:
        launch(_scenarios, folder)
    except (SystemExit, Exception) as err:  # a rank failed: the scenarios it did not finish fail
        (folder / "launch.txt").write_text(f"{type(err).__name__}: {err}")
    return folder


# ----------------------------------------------------------------------------- errors


def _entry_failing_on_rank_1(argv) -> int:
    return cli.run(_failing_on_rank_1, argv)


def _failing_on_rank_1(argv) -> None:
    rank, _, _ = distributed.setup("cpu")
    if rank == 1:
        raise FileNotFoundError("data/x.bin not found on this node: copy it there")
    distributed.barrier()  # rank 0 waits for rank 1, which never comes


def test_an_error_on_a_rank_other_than_0_is_printed_and_stops_the_run(capfd):
    """An out-of-memory on one GPU or a file missing on one node: that rank says it, with its
    rank, and the run ends (rank 0, waiting in a collective, is stopped)."""
    with pytest.raises(SystemExit) as exit_:
        distributed.launch(_entry_failing_on_rank_1, [], 2)
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    assert "[rank 1/2] error: data/x.bin not found on this node: copy it there" in err


def test_under_torchrun_each_rank_prints_its_own_error_and_a_shared_one_once(monkeypatch,
                                                                              capsys):
    def out_of_memory(argv):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def refused(argv):
        raise distributed.EveryRank("the ranks see different files at run/last.pt")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.run(out_of_memory, []) == 2
    assert capsys.readouterr().err.startswith("[rank 1/2] error: CUDA out of memory. Tried")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert cli.run(refused, []) == 2
    assert capsys.readouterr().err.count("different files") == 1


# ----------------------------------------------------------------------------- timeouts


def _late_rank_1(folder, rank) -> None:
    if rank == 1:
        time.sleep(6)  # compiling, or writing a checkpoint: longer than the collective may wait
    try:
        distributed.barrier()
        keep(folder, rank, "passed")
    except RuntimeError as err:
        keep(folder, rank, str(err))


def test_joining_and_collectives_have_their_own_timeouts(tmp_path, monkeypatch):
    """LLB_INIT_TIMEOUT (120 s here) is the wait to join; LLB_COLLECTIVE_TIMEOUT (2 s) that of a
    collective: rank 0 gives up on the late rank 1 at the barrier."""
    monkeypatch.setenv("LLB_INIT_TIMEOUT", "120")
    monkeypatch.setenv("LLB_COLLECTIVE_TIMEOUT", "2")
    launch(_late_rank_1, tmp_path)
    rank0, _ = seen(tmp_path)
    assert rank0 != "passed" and "timed out" in rank0.lower(), rank0


def test_a_timeout_that_is_not_a_number_is_refused(monkeypatch):
    monkeypatch.setenv(distributed.COLLECTIVE_TIMEOUT, "ten")
    with pytest.raises(ValueError, match=r"LLB_COLLECTIVE_TIMEOUT='ten': expected a number"):
        distributed.seconds_of(distributed.COLLECTIVE_TIMEOUT)


# ----------------------------------------------------------------------------- devices


@pytest.mark.parametrize("raised, leaves", [(None, True), (distributed.EveryRank, True),
                                            (ValueError, False)])
def test_the_group_is_left_unless_a_rank_fails_alone(monkeypatch, raised, leaves):
    """Success and EveryRank (all ranks agreed, all are there): destroy the group before the
    exit, which may abort in gloo otherwise; one rank's own error: do not wait on the others."""
    left = []
    monkeypatch.setattr(distributed, "setup", lambda device_type: (0, 2, torch.device("cpu")))
    monkeypatch.setattr(distributed, "teardown", lambda: left.append(True))
    try:
        with distributed.group("cpu"):
            if raised:
                raise raised("refused")
    except (distributed.EveryRank, ValueError):
        pass
    assert left == ([True] if leaves else [])


@pytest.mark.parametrize("visible, local, expected", [(8, 3, "cuda:3"), (1, 3, "cuda:0"),
                                                      (2, 3, None)])
def test_a_local_rank_gets_a_gpu_it_can_see(monkeypatch, visible, local, expected):
    """8 visible GPUs: local rank k takes cuda:k; one (a launcher's CUDA_VISIBLE_DEVICES per
    task): that one, not an "invalid device ordinal"; fewer than the local ranks: an error."""
    joined = {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: joined.update(device=device))
    store = SimpleNamespace(set_timeout=lambda timeout: None)
    monkeypatch.setattr(distributed.dist, "rendezvous", lambda url, timeout: iter([(store, 0, 8)]))
    monkeypatch.setattr(distributed.dist, "PrefixStore", lambda prefix, store: store)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kwargs: joined.update(backend=backend))
    monkeypatch.setenv(distributed.SPAWNED, "1")
    for name, value in dict(RANK=local, WORLD_SIZE=8, LOCAL_RANK=local, MASTER_ADDR="x",
                            MASTER_PORT=1).items():
        monkeypatch.setenv(name, str(value))
    if expected is None:
        with pytest.raises(RuntimeError, match=r"local rank 3 but this process sees 2 GPU"):
            distributed.setup("cuda")
        return
    _, _, device = distributed.setup("cuda")
    assert str(device) == expected and str(joined["device"]) == expected
    assert joined["backend"] == "nccl"


# ----------------------------------------------------------------------------- evaluation


def _evaluate_one_image(folder, rank, name) -> dict:
    torch.manual_seed(0)
    model = llb.LLB(vit.create_vit("micro", image_size=32, patch_size=8, num_classes=10),
                    num_objects=8)
    images = TensorDataset(torch.randn(1, 3, 32, 32), torch.tensor([3]))
    loader = data.build_loader(images, batch_size=4, train=False, rank=rank, world_size=2,
                               workers=0)
    cpu = torch.device("cpu")
    return evaluate.evaluate(model, loader, cpu, recipes.autocast("off", cpu), real=[[3]])


def test_evaluation_of_a_split_smaller_than_the_ranks(two_ranks):
    """1 validation image on 2 ranks: rank 1's shard is empty, and both ranks get the image's
    top-1 / top-5 (ReaL included)."""
    rank0, rank1 = seen(two_ranks, "evaluation")
    assert rank0 == rank1
    assert set(rank0) == {f"top{k}_{p}" for k in ("1", "5", "1_real") for p in evaluate.PREDICTIONS}
    assert all(v in (0.0, 100.0) for v in rank0.values())  # one image: right or wrong


# ----------------------------------------------------------------------------- randomness


def _dropout_masks(folder, rank, name) -> dict:
    """The dropout masks of epochs 0 and 1, then of epoch 1 again (as a resumed run)."""
    torch.manual_seed(0)  # the same init on every rank, as train.build_model
    model = vit.create_vit("micro", image_size=32, patch_size=8, num_classes=10, dropout=0.5)
    masks = []
    model.drop.register_forward_hook(lambda m, i, out: masks.append(out.eq(0)))
    net = torch.nn.parallel.DistributedDataParallel(model)
    r = recipes.Recipe(stage="vit", defaults="scratch", image_size=32, augment="none",
                       epochs=2, batch_size=4, world_size=2, amp="off", **recipes.SCRATCH)
    images = TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 10)
    loader = data.build_loader(images, batch_size=4, train=True, rank=rank, world_size=2,
                               workers=0)
    optimizer = train.build_optimizer(list(model.parameters()), name="adamw", lr=1e-3,
                                      weight_decay=0.0, decay_all=False, device=torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for epoch in (0, 1):
        train.train_epoch(net, loader, optimizer, scaler, r, epoch=epoch)
    straight = list(masks)
    masks.clear()
    torch.manual_seed(1234)  # another process: whatever its generator's state
    train.train_epoch(net, loader, optimizer, scaler, r, epoch=1)
    return dict(straight=straight, resumed=list(masks))


def test_each_rank_draws_its_own_dropout_and_a_resumed_epoch_draws_the_same(two_ranks):
    rank0, rank1 = seen(two_ranks, "dropout")
    assert isinstance(rank0, dict), rank0
    steps = len(rank0["straight"])  # 2 epochs x 2 steps
    assert steps == 4 and all(0.3 < m.float().mean() < 0.7 for m in rank0["straight"])
    # each rank its own masks (DDP averages the gradients of different draws)
    assert not any(torch.equal(a, b) for a, b in zip(rank0["straight"], rank1["straight"]))
    # epoch 1 again, as a resumed run: on each rank the masks of that rank's straight run
    for masks in (rank0, rank1):
        assert all(torch.equal(a, b) for a, b in zip(masks["straight"][2:], masks["resumed"]))


# ----------------------------------------------------------------------------- files


def _files_of_each_node(folder, rank, name) -> str:
    """Each rank in its own folder (a node's own disk); run/last.pt written on node 0 only,
    or on both."""
    node = folder / f"node{rank}"
    (node / "run").mkdir(parents=True)
    if rank == 0 or name == "same_files":
        (node / "run" / "last.pt").write_bytes(b"x" * 3000)
    here = os.getcwd()
    os.chdir(node)
    try:
        distributed.check_same_files([Path("run/last.pt")])
        return "same"
    except distributed.EveryRank as err:
        return str(err)
    finally:
        os.chdir(here)


def test_every_rank_checks_it_sees_the_files_rank_0_wrote(two_ranks):
    """A stage reads run/last.pt (resume) or run/vit/last.pt (LLB's ViT) on every rank, but
    only rank 0 writes it: on node-local disks the other nodes lack it, or hold a stale one."""
    assert seen(two_ranks, "same_files") == ["same", "same"]
    rank0, rank1 = seen(two_ranks, "node_files")
    assert rank0 == rank1  # every rank stops alike, with one message
    assert "different files at run/last.pt (rank 0 on " in rank0
    assert "3,000 bytes" in rank0 and "rank 1 on " in rank0 and ": missing" in rank0
    assert "copy run/last.pt to the same path on every node" in rank0


def _downloads(folder, rank, name) -> list:
    """--download on two nodes of one rank each, or one node of two ranks: who downloads, in
    which order (each rank's call to data.build_datasets, logged)."""
    folder.mkdir(exist_ok=True)
    os.environ["LOCAL_RANK"] = "0" if name == "two_nodes" else str(rank)

    def built(name, root, *, download, **kwargs):
        with open(folder / "calls.txt", "a") as f:
            f.write(f"{rank} {download}\n")
        images = TensorDataset(torch.zeros(12, 3, 4, 4), torch.zeros(12, dtype=torch.long))
        return images, images, data.DataInfo(name="cifar10", num_classes=1, image_size=4,
                                             class_names=["a"], augment="none")

    build, data.build_datasets = data.build_datasets, built
    r = SimpleNamespace(pretrained=None, dataset="cifar10", data_dir="d", image_size=4,
                        augment="none", classes=None, max_per_class=None, seed=0,
                        eval_framing="weights", stage="vit", batch_size=2)
    try:
        data.build_loaders(r, rank=rank, world=2, workers=0, device=torch.device("cpu"),
                           download=True)
    finally:
        data.build_datasets = build
    distributed.barrier()
    return (folder / "calls.txt").read_text().split("\n")[:-1]


def test_downloads_happen_once_per_node_rank_0_first(two_ranks):
    assert seen(two_ranks, "two_nodes")[0] == ["0 True", "1 True"]
    assert seen(two_ranks, "one_node")[0] == ["0 True", "1 False"]


def test_the_llb_stage_on_node_local_out_dirs_stops_every_rank_with_what_to_do(tmp_path):
    """Two "nodes" (two processes joined by hand, each in its own folder, the same relative
    --out-dir): rank 0 writes run/vit/last.pt on its own disk only; the LLB stage, which every
    rank reads it for, is refused on both with one message, not a silent rank 1."""
    env = dict(os.environ, WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "--epochs", "1", "--llb-epochs",
           "1", "--out-dir", "run"]
    nodes = []
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
        nodes.append(subprocess.Popen(cmd, cwd=tmp_path / f"node{rank}", text=True,
                                      env=env | {"RANK": str(rank)},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    done = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [2, 2], done[0][1][-2000:]
    err0, err1 = done[0][1], done[1][1]
    assert "[rank 0/2] error: the ranks see different files at run/vit/last.pt" in err0
    assert "rank 1 on" in err0 and "missing" in err0 and "error" not in err1
    assert (tmp_path / "node0" / "run" / "vit" / "last.pt").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = ["--dataset", "synthetic", "--max-per-class", "12", "--model", "micro", "--batch-size",
        "20", "--device", "cpu", "--num-objects", "16"]


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("disconnect", [True, False])
@pytest.mark.parametrize("diversity", [True, False])
@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_the_parameters_ddp_is_told_get_no_gradient_are_exactly_those(disconnect, diversity,
                                                                      freeze, pool):
    """DDP waits for a gradient of every parameter unless told (find_unused_parameters, which
    train.py sets from LLB.unreached_parameters): check the list against autograd for every
    combination of the switches that change which parameters the loss reaches."""
    torch.manual_seed(0)
    backbone = vit.create_vit("micro", image_size=32, patch_size=8, num_classes=10, pool=pool)
    model = llb.LLB(backbone, num_objects=8, disconnect=disconnect, diversity=diversity,
                    freeze_backbone=freeze, integrate=disconnect, pos_embed=not diversity)
    out = model(torch.randn(2, 3, 32, 32))
    model.loss(out, torch.tensor([1, 2]))[0].backward()
    none = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert none == model.unreached_parameters()


@pytest.mark.parametrize("layer", [None, 1])
def test_llb_keeps_two_backbone_blocks_whatever_the_depth(layer):
    """A frozen backbone hands LLB z_l and z_L, not all L block outputs: while LLB's branch
    runs, the block outputs still alive are at most those two, at depth 4 as at depth 8."""
    alive = {depth: alive_at_the_branch(depth, layer) for depth in (4, 8)}
    assert alive[4] == alive[8] and alive[8] <= 2


def alive_at_the_branch(depth: int, layer: int | None) -> int:
    """How many of a frozen backbone's block outputs are alive when LLB's extractor starts."""
    backbone = vit.ViT(image_size=32, patch_size=8, width=32, depth=depth, heads=2, mlp_dim=64,
                       num_classes=10)
    outputs = []
    for block in backbone.blocks:
        block.register_forward_hook(lambda m, i, out: outputs.append(weakref.ref(out)))
    model = llb.LLB(backbone, num_objects=8, layer=layer)
    counted = []
    model.extractor.register_forward_pre_hook(
        lambda m, i: counted.append(sum(ref() is not None for ref in outputs)))
    model(torch.randn(2, 3, 32, 32))
    return counted[0]


def test_two_ranks_compiled_under_bf16_train_both_stages(tmp_path):
    """--compile (the aot_eager backend: no C++ compiler needed) under bf16 autocast, ViT then
    LLB on 2 ranks, with dropout and the ablations w/o disconnection and w/o L_div together,
    which leave to_objects without a gradient (DDP is told: LLB.unreached_parameters). The run
    ends only if the replicas' parameters are identical (distributed.check_replicas)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", *TINY, "--epochs", "1", "--llb-epochs", "1", "--compile",
           "aot_eager", "--amp", "bf16", "--dropout", "0.1", "--no-disconnect", "--no-diversity",
           "--gpus", "2", "--out-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    for folder in (out / "vit", out):
        saved = torch.load(folder / "last.pt", weights_only=True)
        assert (saved["recipe"]["amp"], saved["recipe"]["world_size"], saved["epoch"]) == (
            "bf16", 2, 1)
        # 120 images over 2 ranks of 20: 3 steps (to_objects, without gradient, has no state)
        assert all(s["step"] == 3 for s in saved["optimizer"]["state"].values())
    assert saved["llb_config"]["disconnect"] is False and saved["llb_config"]["diversity"] is False
    assert "p_O (integrated)" in done.stdout
