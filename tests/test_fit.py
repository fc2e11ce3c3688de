"""Defaults that fit the data (recipes.derived_from_data), the `basic` crop, the time estimate.

Each test builds its own PNG folders in a tmp dir: nothing is downloaded.
"""
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

import llb
import recipes
import train
from inputs import transforms


def image_folder(root, *, side, per_class, classes=2, val_per_class=2):
    """root/{train,val}/c<k>/<i>.png: `side` x `side` random RGB images."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def stages(*argv):
    return [r for r, _ in recipes.plan(train.parse_args(list(argv)))]


def test_a_folder_of_small_images_gets_its_size_a_small_model_and_a_batch_it_holds(tmp_path):
    root = image_folder(tmp_path / "faces", side=25, per_class=10)  # 20 training images
    vit_stage, llb_stage = stages("--dataset", "folder", "--data-dir", str(root))
    # 25 px -> patch 4, a multiple of it near 25; the smallest preset for 20 images
    assert (vit_stage.image_size, vit_stage.patch_size, vit_stage.model) == (24, 4, "micro")
    assert vit_stage.batch_size == 20 // recipes.MIN_STEPS_PER_EPOCH < recipes.Recipe.batch_size
    assert llb_stage.batch_size == vit_stage.batch_size and llb_stage.image_size == 24
    # LLB: the objects' floor for 2 classes, no deeper than the 4-block ViT-micro
    assert llb_stage.llb["num_objects"] == recipes.MIN_OBJECTS
    assert llb_stage.llb["depth"] == 4 < llb.LLBConfig.depth
    printed = vit_stage.describe() + llb_stage.describe()
    assert "image_size=24 (median side 25 px of 20 images" in printed
    assert "batch_size=5 (capped: 20 training images" in printed
    assert "llb.num_objects=64 (2 classes" in printed
    # 10 images a class: the printout says a ViT from scratch learns little from so few
    assert "model=micro (20 training images; only 10 a class: from scratch a ViT" in printed
    assert "fine-tune released weights (--pretrained)" in printed
    root = image_folder(tmp_path / "more", side=25, per_class=recipes.FEW_PER_CLASS)
    assert "only" not in stages("--dataset", "folder", "--data-dir", str(root))[0].describe()


def test_options_given_win_over_the_data(tmp_path):
    root = image_folder(tmp_path / "f", side=25, per_class=10)
    vit_stage, llb_stage = stages("--dataset", "folder", "--data-dir", str(root), "--image-size",
                                  "32", "--model", "tiny", "--batch-size", "4",
                                  "--num-objects", "100", "--llb-depth", "3")
    assert (vit_stage.image_size, vit_stage.model, vit_stage.batch_size) == (32, "tiny", 4)
    assert vit_stage.patch_size == 4  # from the size given
    assert (llb_stage.llb["num_objects"], llb_stage.llb["depth"]) == (100, 3)
    assert set(vit_stage.origin) == {"patch_size"} and llb_stage.origin == {}


def test_imagenet_keeps_the_paper_recipe_and_a_subset_fits_its_data(tmp_path):
    root = image_folder(tmp_path / "imagenet", side=40, per_class=8, classes=3)
    full_vit, full_llb = stages("--dataset", "imagenet", "--data-dir", str(root))
    assert (full_vit.image_size, full_vit.model, full_vit.batch_size) == (224, "base", 128)
    assert (full_llb.llb["num_objects"], full_llb.llb["depth"]) == (2048, 6)
    assert full_vit.origin == {} and full_llb.origin == {}
    sub_vit, sub_llb = stages("--dataset", "imagenet", "--data-dir", str(root), "--classes", "2")
    assert (sub_vit.image_size, sub_vit.model, sub_vit.batch_size) == (40, "micro", 4)
    assert sub_llb.llb["num_objects"] == recipes.MIN_OBJECTS
    # released weights keep the authors' recipe on a folder too
    llb_stage, = stages("--dataset", "folder", "--data-dir", str(root), "--method", "llb",
                        "--pretrained", "vit_b_16:IMAGENET1K_V1")
    assert (llb_stage.image_size, llb_stage.llb["num_objects"], llb_stage.llb["depth"]) == (
        224, 2048, 6)


def test_the_rules_in_numbers():
    assert recipes.objects_for(1000) == 2048  # the paper's ImageNet-1k
    assert recipes.objects_for(10) == 64 and recipes.objects_for(100) == 205
    assert [recipes.patch_for(s) for s in (8, 32, 64, 96, 128, 500)] == [4, 4, 4, 8, 8, 16]
    assert recipes.size_for(25, 4) == 24 and recipes.size_for(8, 4) == 16  # >= 4 patches a side
    assert recipes.size_for(500, 16) == 224 and recipes.size_for(100, 8) == 96
    assert [recipes.preset_for(n) for n in (60, 1437, 50_000, 130_000, 1_281_167)] == [
        "micro", "micro", "tiny", "small", "base"]
    assert recipes.batch_cap(60, 1) == 15 and recipes.batch_cap(1437, 2) == 179


def kept_fraction(transform, side: int, draws: int = 200) -> float:
    """The smallest fraction of an all-white image's pixels still white after the transform."""
    torch.manual_seed(0)
    image = torch.full((3, side, side), 255, dtype=torch.uint8)
    return min((transform(image) == 255).all(0).float().mean().item() for _ in range(draws))


def test_basic_never_crops_away_most_of_a_small_image():
    train_tf, _, size = transforms.make_transforms("folder", image_size=32, eval_spec=None,
                                             augment="basic")
    steps = train_tf.transforms
    assert size == 32 and not any(isinstance(s, v2.RandomResizedCrop) for s in steps)
    crop = next(s for s in steps if isinstance(s, v2.RandomCrop))
    # a shift of at most 4 px: at least (28 / 32)^2 of the image is kept in every draw
    assert kept_fraction(v2.Compose([crop]), 32) >= (28 / 32) ** 2 - 1e-6
    assert not any(isinstance(s, v2.RandomHorizontalFlip) for s in steps)  # a folder: no flip
    # at 224 px: a random-resized crop of at least half of a folder image's area; ImageNet keeps
    # the standard (0.08, 1) of its many images, and its flip
    train_tf, _, _ = transforms.make_transforms("folder", image_size=224, eval_spec=None,
                                          augment="basic")
    resized = next(s for s in train_tf.transforms if isinstance(s, v2.RandomResizedCrop))
    assert resized.scale == (0.5, 1.0)
    train_tf, _, _ = transforms.make_transforms("imagenet", image_size=224, eval_spec=None,
                                          augment="basic")
    resized = next(s for s in train_tf.transforms if isinstance(s, v2.RandomResizedCrop))
    assert resized.scale == (0.08, 1.0)
    assert any(isinstance(s, v2.RandomHorizontalFlip) for s in train_tf.transforms)


def test_a_folder_smaller_than_a_batch_trains_and_says_how_long(tmp_path, capsys, monkeypatch):
    root = image_folder(tmp_path / "tiny", side=32, per_class=6)  # 12 training images
    monkeypatch.setattr(train, "LONG_RUN_S", 0)  # every run is "long": the hints are printed
    out = tmp_path / "run"
    results = train.main(["--dataset", "folder", "--data-dir", str(root), "--epochs", "1",
                          "--llb-epochs", "1", "--device", "cpu", "--out-dir", str(out)])
    assert results["top1_integrated"] is not None
    saved = torch.load(out / "last.pt", weights_only=True)["recipe"]
    assert (saved["batch_size"], saved["image_size"]) == (3, 32)
    assert saved["origin"]["batch_size"].startswith("capped")
    printed = capsys.readouterr().out
    # once per stage, timed on the stage's own steps
    assert printed.count("[vit] expected ") == 1 and printed.count("[llb] expected ") == 1
    assert "for 1 epochs x 4 steps" in printed
    assert "--image-size, now 32" in printed and "--epochs, now 1" in printed


def test_the_expected_time_adds_evaluation_and_says_what_shortens_a_long_cpu_run():
    r = recipes.plan(train.parse_args(["--method", "vit"]))[0][0]
    said = train.expected_time(r, 2.0, 10, 3, 6, cpu=True)  # 3 x (10 + 6 / 3) steps of 2 s
    assert said.startswith("[vit] expected 01:12 for 3 epochs x 10 steps (2 s a step")
    assert "shorter" not in said
    long = train.expected_time(r, 200.0, 10, 3, 6, cpu=True)
    assert "expected 2:00:00 for" in long and "--model, now micro" in long
    assert "shorter" not in train.expected_time(r, 200.0, 10, 3, 6, cpu=False)
