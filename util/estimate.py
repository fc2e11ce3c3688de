"""The expected wall time of a run, from a few timed steps, printed before it starts.

Each stage's model takes TIMED_STEPS training steps (forward and backward, no optimizer step,
gradients dropped, the RNG state restored) on random batches of TIMED_BATCHES sizes after one
untimed step (`step_seconds`); the step of the stage's batch is scaled to its steps and epochs,
plus evaluation
(EVAL_COST of a training step per image). Loading is not timed: sets decoded in memory load in
a small fraction of a step, streamed ones (large folders) may take longer than this says. A run
expected to take over LONG_RUN_S on a CPU is printed with the options that shorten it.
"""
import copy
import time

import torch

import llb
from util.distributed import is_master

TIMED_STEPS = 2  # timed steps per stage, after one untimed (warm-up) step
TIMED_BATCHES = (16, 64)  # images per timed step (at most the batch)
QUICK_STEP_S = 30.0  # a step of the smaller batch slower than this: the larger is not timed
EVAL_COST = 1 / 3  # evaluating an image (forward only), in units of its training step
LONG_RUN_S = 3600  # a CPU run expected to take longer is printed with what shortens it

_expected = {"start": None, "seconds": None}  # the run's estimate, for the progress bars


def step_seconds(model: torch.nn.Module, *, batch: int, image_size: int, num_classes: int,
                 device: torch.device) -> float:
    """Seconds of one training step of `batch` images: on the line through the times of the two
    TIMED_BATCHES (a fixed cost per step and one per image), or in proportion to the smaller
    one's time when the batch is no larger or when that step alone takes over QUICK_STEP_S."""
    sizes = [min(batch, n) for n in TIMED_BATCHES]
    fastest = []
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the batch and dropout: not from the run's RNG
        model.train()
        for images in sizes:
            x = torch.randn(images, 3, image_size, image_size, device=device)
            y = torch.randint(num_classes, (images,), device=device)
            times = []
            for _ in range(TIMED_STEPS + 1):
                t0 = time.perf_counter()
                loss, _ = model.loss(model(x), y)
                loss.backward()
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            fastest.append(min(times[1:]))
            if batch <= images or fastest[0] > QUICK_STEP_S:
                break
    model.zero_grad(set_to_none=True)
    if len(fastest) == 1:
        return fastest[0] * batch / sizes[0]
    per_image = max((fastest[1] - fastest[0]) / (sizes[1] - sizes[0]), 0.0)
    return fastest[1] + (batch - sizes[1]) * per_image


def stage_seconds(step: float, *, epochs: int, steps: int, batch: int, val_images: int) -> float:
    """A stage's wall time: its training steps and an evaluation per epoch."""
    return epochs * (steps * step + val_images / batch * step * EVAL_COST)


def announce(planned: list, loaders: tuple, device: torch.device, build) -> float:
    """Print the run's expected wall time (and, when long on a CPU, what shortens it); returns
    it in seconds. `build(recipe, num_classes)` builds a stage's model (train.build_model); the
    LLB stage of vit+llb is timed on a copy of the ViT stage's untrained model. Other ranks
    (DDP) skip it and return 0."""
    if not is_master():
        return 0.0
    train_loader, val_loader, info = loaders
    parts = []
    total = 0.0
    vit_model = None
    for r, _ in planned:
        if r.stage == "llb" and vit_model is not None:
            model = llb.LLB(copy.deepcopy(vit_model), **r.llb).to(device)
        else:
            model = build(r, info.num_classes).to(device)
            vit_model = model
        step = step_seconds(model, batch=r.batch_size, image_size=info.image_size,
                            num_classes=info.num_classes, device=device)
        seconds = stage_seconds(step, epochs=r.epochs, steps=len(train_loader),
                                batch=r.batch_size, val_images=len(val_loader.sampler))
        parts.append(f"{r.stage} {r.epochs} epochs x {len(train_loader)} steps "
                     f"{say(seconds)}")
        total += seconds
    print(f"expected wall time {say(total)} on {device.type} ({'; '.join(parts)}; from "
          f"timed steps of {' and '.join(map(str, TIMED_BATCHES))} images, loading not timed)")
    if device.type == "cpu" and total > LONG_RUN_S:
        print(shorter(planned[0][0]))
    _expected.update(start=time.time(), seconds=total)
    return total


def shorter(r) -> str:
    """The options that make a long CPU run shorter, with the values the run has now."""
    model = f", now {r.model}" if r.model else ""
    return (f"over {say(LONG_RUN_S)} on a CPU; shorter: fewer epochs (--epochs, now {r.epochs}; "
            f"--llb-epochs), smaller images (--image-size, now {r.image_size}), a smaller "
            f"model (--model{model}; see vit.PRESETS), or a GPU (--device cuda)")


def say(seconds: float) -> str:
    """~42 s, ~12 min, ~2.5 h."""
    if seconds < 60:
        return f"~{seconds:.0f} s"
    if seconds < 3600:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def left() -> str:
    """For a progress bar: the run's expected time left, '' before announce() ran."""
    if _expected["start"] is None:
        return ""
    total = _expected["seconds"]
    spent = time.time() - _expected["start"]
    return f", run {say(max(0.0, total - spent))} left of {say(total)}"
