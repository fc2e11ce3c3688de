"""Tests for benchmark.py: the report's structure through its command line on a
tiny model, and that our ViT and torchvision's are built with the same parameter count.
No timing is asserted (the machine may be shared)."""
import json
import math

import pytest
import torch

import benchmark

TINY = ["--model", "micro", "--image-size", "32", "--patch-size", "8", "--batch-size", "4",
        "--device", "cpu", "--num-objects", "16"]


@pytest.fixture
def one_thread():
    """Tiny ops on 2 shared, busy cores: 1 thread avoids ~2 ms OpenMP stalls per op."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cli_writes_benchmark_json(tmp_path, one_thread):
    returned = benchmark.main([*TINY, "--out-dir", str(tmp_path)])
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert returned == report
    assert report["device"] == "cpu (1 thread)"
    assert set(report["results"]) == {"vit", "torchvision_vit", "llb"}
    for name, r in report["results"].items():
        assert {"train_img_s", "eval_img_s", "peak_mem_mb"} <= set(r)
        for key, value in r.items():  # the figures, step times, parameter counts, ratios
            if key != "mfu":  # None on CPU
                assert isinstance(value, (int, float)) and math.isfinite(value), (name, key)
                assert value > 0, (name, key, value)
    assert report["results"]["vit"]["mfu"] is None
    assert report["results"]["llb"]["trainable_params"] < report["results"]["llb"]["params"]
    assert report["config"]["llb"]["num_objects"] == 16  # explicit --num-objects is kept
    assert report["batch_size"] == 4 and report["amp"] == "off"
    assert (report["warmup_steps"], report["timed_steps"]) == benchmark.STEPS["cpu"]  # defaults


def test_same_architecture_and_llb_defaults():
    args = benchmark.parse_args(TINY[:-2])  # no --num-objects: the authors' 2048
    ours = benchmark.build_model("vit", args)
    theirs = benchmark.build_model("torchvision_vit", args)
    sizes = [sorted(p.numel() for p in m.parameters()) for m in (ours, theirs)]
    assert sizes[0] == sizes[1]  # the same tensors' sizes, hence the same count
    model = benchmark.build_model("llb", args)
    assert (model.config.num_objects, model.config.depth, model.config.layer) == (2048, 6, 3)
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_train_flops_formula():
    c = benchmark.vit_config(benchmark.parse_args(["--model", "base", "--device", "cpu"]))
    per_image_forward = benchmark.vit_train_flops(c, 1) / 3
    assert abs(per_image_forward / 1e9 - 35.1) < 0.3  # ViT-B/16 at 224: ~17.6 GMACs (timm/fvcore)
