"""Tests for the uint8 tensor pipeline: the same pixels as torchvision's PIL reference, faster.

data.load_uint8 must decode what data.load_rgb decodes, transforms.AsPIL must run RandAugment
as on a PIL image, transforms.ToNormalized must equal v2's ToDtype -> Normalize, and a folder's
items must be the reference's (PIL decode, the same v2 steps on PIL images, ToDtype ->
Normalize: benchmark_data.py's peer) within a uint8 level.
"""
import io
import re

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF2

import benchmark_data
import data
from inputs import transforms


def _photo(size=(90, 70), seed=0):
    """A smooth random colour image (W, H) = size with some noise, as a PIL image."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(1, 3, 5, 5, generator=g) * 255
    img = torch.nn.functional.interpolate(grid, size=size[::-1], mode="bicubic")
    img = img + 10 * torch.randn(img.shape, generator=g)
    return Image.fromarray(img[0].clamp(0, 255).byte().permute(1, 2, 0).numpy())


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_load_uint8_decodes_a_jpeg_to_the_pixels_pil_gives(tmp_path, mode):
    path = tmp_path / "a.jpg"
    _photo().convert(mode).save(path, quality=90)
    x = data.load_uint8(str(path))
    assert x.shape == (3, 70, 90) and x.dtype == torch.uint8
    assert torch.equal(x, TF2.pil_to_tensor(data.load_rgb(str(path))))


def test_load_uint8_reads_other_formats_through_pil(tmp_path):
    path = tmp_path / "a.png"  # RGBA: load_rgb composites it onto white
    rgba = _photo().convert("RGBA")
    rgba.putalpha(0)
    rgba.save(path)
    white = torch.full((3, 70, 90), 255, dtype=torch.uint8)
    assert torch.equal(data.load_uint8(str(path)), white)


def test_load_uint8_names_the_file_it_cannot_read(tmp_path):
    path = tmp_path / "cut.jpg"
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[:300])  # torchvision.io fails, then PIL says why
    with pytest.raises(RuntimeError, match=r"cannot read image file .*cut\.jpg.*never skipped"):
        data.load_uint8(str(path))


def test_to_normalized_equals_v2_to_dtype_then_normalize():
    x = torch.randint(0, 256, (3, 17, 11), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    out = transforms.ToNormalized(mean, std)(x)
    assert out.dtype == torch.float32 and out.shape == (3, 17, 11)
    assert torch.allclose(out, reference(x), atol=1e-6)


def test_as_pil_runs_randaugment_as_on_the_pil_image():
    image = _photo()
    randaugment = v2.RandAugment(num_ops=3, magnitude=9)
    for seed in range(5):
        torch.manual_seed(seed)
        out = transforms.AsPIL(randaugment)(TF2.pil_to_tensor(image))
        torch.manual_seed(seed)
        expected = TF2.pil_to_tensor(randaugment(image))
        assert out.dtype == torch.uint8 and torch.equal(out, expected)
    assert isinstance(transforms.AsPIL(randaugment)(image), Image.Image)  # PIL in, PIL out


def _jpeg_folder(root):
    for split in ("train", "val"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                _photo((300, 260), seed=10 * c + i).save(root / split / f"c{c}" / f"{i}.jpg",
                                                         quality=90)
    return root


def framing_levels(transform: v2.Compose, path: str) -> float:
    """The 99th percentile of the uint8 levels between the transform's framing (its leading
    Resize and CenterCrop, if any) run on the uint8 tensor and on the PIL image. 0 where
    torchvision resizes uint8 as PIL does; 1 where it resizes through float32: its bilinear
    before 0.24 on a CPU without AVX2 (or with ATEN_CPU_CAPABILITY=default)."""
    framing = []
    for step in transform.transforms:
        if not isinstance(step, (v2.Resize, v2.CenterCrop)):
            break
        framing.append(step)
    if not framing:
        return 0.0
    framed = v2.Compose(framing)
    ours = framed(data.load_uint8(path)).float()
    pil = TF2.pil_to_tensor(framed(data.load_rgb(path))).float()
    return (ours - pil).abs().quantile(0.99).item()


@pytest.mark.parametrize("augment", ["paper", "basic", "none"])
def test_items_are_the_pil_reference_pixels_within_a_level(tmp_path, augment):
    """Within a level of the reference, beyond what torchvision's own resize puts between uint8
    and PIL on this machine (`framing_levels`), which RandAugment's colour ops may widen by one."""
    root = _jpeg_folder(tmp_path / "f")
    train, val, _ = data.build_datasets("imagenet", str(root), augment=augment)
    std = torch.tensor(transforms.IMAGENET_STD).view(3, 1, 1)
    for dataset in (train, val):
        reference = v2.Compose(benchmark_data.peer_steps(dataset.transform, v2_normalize=True))
        assert not any(isinstance(step, transforms.AsPIL) for step in reference.transforms)
        resize = framing_levels(dataset.transform, dataset.samples[0][0])
        assert resize <= 1
        for i in range(6):
            torch.manual_seed(i)  # the same augmentation draws
            ours = dataset[i][0]
            torch.manual_seed(i)
            theirs = reference(data.load_rgb(dataset.samples[i][0]))  # PIL throughout
            levels = ((ours - theirs) * std * 255).abs()  # uint8 levels
            assert ours.shape == theirs.shape == (3, 224, 224)
            assert levels.mean() < 0.5 and levels.quantile(0.99) <= resize + 1.01


def test_benchmark_jpeg_prints_rates_agreement_and_cores(capsys):
    benchmark_data.main(["--count", "2", "--rounds", "1", "--augment", "paper"])
    out = capsys.readouterr().out
    for row in ("decode only, torchvision.io", "eval: (a) this project",
                "train paper: (b) PIL + v2, reference", "train paper: (c) v2 on tensors",
                "train paper: (d) on CUDA, the loader's part"):
        assert f"| {row} |" in out
    assert "8 GPUs x 4500 img/s = 36000 img/s need" in out
    assert "the GPU then runs the rest on the batch" in out and "train paper " in out
    for row in ("(a) this project", "(c) v2 on tensors"):  # vs (b): under a level on average
        mean = re.search(rf"\| train paper: {re.escape(row)} \| ([0-9.]+) / ", out)
        assert mean is not None and float(mean.group(1)) < 0.5, row


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_benchmark_jpeg_refuses_cuda_where_there_is_none(capsys):
    with pytest.raises(SystemExit):
        benchmark_data.main(["--jpeg", "--device", "cuda"])
    assert "--device cuda: torch sees no CUDA device here" in capsys.readouterr().err


def test_benchmark_jpeg_refuses_a_folder_without_jpegs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    for folder in (tmp_path, tmp_path / "nope"):
        with pytest.raises(SystemExit, match=r"is not a folder holding \.jpg/\.jpeg files"):
            benchmark_data.main(["--jpeg", "--images", str(folder)])
