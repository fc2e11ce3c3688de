"""Tests of the synthetic set's calibration (synthetic.py): the properties the demo's numbers rest
on, checked on the generator alone (no training; docs/demo_seeds.md has the measured accuracies).
"""
import pytest
import torch

import vit
from inputs import synthetic
from inputs.synthetic import RANKING, SYNTHETIC_CLASSES, SyntheticObjects

RANK_OF = torch.empty(len(RANKING), dtype=torch.long)
RANK_OF[torch.tensor(RANKING)] = torch.arange(len(RANKING))


def cell_pixels(ds: SyntheticObjects, k: int) -> torch.Tensor:
    """(N, 3, 8, 8) float pixels in [0, 1] of each image's k-th object cell."""
    n = len(ds)
    cells = ds.images.float().div(255).view(n, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(n, 16, 3, 8, 8)
    return cells[torch.arange(n), ds.cells[:, k]]


def test_twin_templates_differ_by_a_small_mark_only():
    colour, alpha = synthetic._object_templates()
    drawn = colour * alpha
    twin_gap = [(drawn[2 * p] - drawn[2 * p + 1]).abs().mean().item() for p in range(6)]
    other_gap = [(drawn[2 * p] - drawn[2 * q + 1]).abs().mean().item()
                 for p in range(6) for q in range(6) if q != p]
    assert min(twin_gap) > 0.005  # a real mark: the twins are not the same template
    assert max(twin_gap) < 0.4 * min(other_gap)
    # Where the twins differ: the tint channel inside the shape, or the dot's pixel (0, 0).
    for t, channel in zip(synthetic.TINTED_TYPES, synthetic.TINT_CHANNEL):
        diff = (drawn[t] - drawn[t - 1]).abs()
        assert torch.allclose(diff[channel], synthetic.TINT * alpha[t, 0])
        assert diff.sum() == diff[channel].sum()
    for t in synthetic.DOTTED_TYPES:
        diff = (drawn[t] - drawn[t - 1]).abs().sum(0)
        assert diff[0, 0] > 0.5 and diff.sum() == diff[0, 0]


def test_faded_marks_are_the_only_ambiguity_and_bounded():
    ds = SyntheticObjects("train", num_images=6000, seed=0)
    marked = ds.objects % 2 == 1
    assert not ds.faded[~marked].any()  # only a marked twin can lose its mark
    share = ds.faded[marked].float().mean().item()
    assert abs(share - synthetic.FADED_SHARE) < 0.02
    # Reading every object as it is drawn (a faded one as its plain twin) gives the label of
    # every image whose decision no faded object changes: the errors no classifier avoids.
    seen = RANK_OF[ds.objects - ds.faded.long()].min(1).values
    ambiguous = (seen != torch.tensor(ds.targets)).float().mean().item()
    assert 0.10 < ambiguous < 0.22  # the calibrated ceiling: about 84% top-1
    exact = RANK_OF[ds.objects].min(1).values
    assert torch.equal(exact, torch.tensor(ds.targets))


def test_bayes_rule_is_the_ceiling_of_reading_the_drawn_types():
    # without fading the drawn types decide the label: the best guess is always right
    assert sum(p for _, p in synthetic.bayes_rule(0.0).values()) == pytest.approx(1.0)
    rule = synthetic.bayes_rule()
    ceiling = sum(p for _, p in rule.values())
    assert 0.80 < ceiling < 0.95
    # on a split it beats reading every object as drawn (it also weighs the other objects)
    ds = SyntheticObjects("val", num_images=4000, seed=0)
    drawn = (ds.objects - ds.faded.long()).sort(1).values
    truth = torch.tensor(ds.targets)
    bayes = torch.tensor([rule[tuple(row.tolist())][0] for row in drawn])
    read = RANK_OF[drawn].min(1).values
    assert (bayes == truth).float().mean() > (read == truth).float().mean() + 0.01
    assert abs((bayes == truth).float().mean().item() - ceiling) < 0.02


def test_faded_objects_are_painted_as_their_plain_twin():
    ds = SyntheticObjects("train", num_images=3000, seed=2)
    k = synthetic.OBJECTS_PER_IMAGE
    pixels = torch.cat([cell_pixels(ds, i) for i in range(k)])  # every object of every image
    types, faded = ds.objects.T.flatten(), ds.faded.T.flatten()
    inside_of = synthetic._object_templates()[1][:, 0] > 0
    for t in synthetic.DOTTED_TYPES:
        corner = pixels[types == t][:, :, 0, 0].mean(1)  # grey level of the dot's pixel
        dot = ~faded[types == t]
        assert dot.any() and (~dot).any()
        assert corner[dot].min() > 0.7 and corner[~dot].max() < 0.45  # dot or background
        assert pixels[types == t - 1][:, :, 0, 0].mean(1).max() < 0.45
    for t, channel in zip(synthetic.TINTED_TYPES, synthetic.TINT_CHANNEL):
        tint = pixels[:, channel][:, inside_of[t]].mean(1)
        plain = tint[types == t - 1]
        kept = tint[(types == t) & ~faded]
        lost = tint[(types == t) & faded]
        assert kept.mean() - plain.mean() > 0.15  # about TINT, less the brightness jitter
        assert (lost.mean() - plain.mean()).abs() < 0.02


def test_seeded_balanced_and_disjoint_streams():
    a = SyntheticObjects("train", num_images=2000, seed=5)
    b = SyntheticObjects("train", num_images=2000, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.faded, b.faded)
    assert a.targets == b.targets and torch.equal(a.objects, b.objects)
    assert torch.bincount(torch.tensor(a.targets)).tolist() == [200] * SYNTHETIC_CLASSES
    val = SyntheticObjects("val", num_images=2000, seed=5)
    other = SyntheticObjects("train", num_images=2000, seed=6)
    # No image repeats across the splits or the seeds (seed 5's val and seed 6's train are
    # different streams: 2 * seed + split).
    train_bytes = {x.numpy().tobytes() for x in a.images}
    assert not train_bytes & {x.numpy().tobytes() for x in val.images}
    assert not train_bytes & {x.numpy().tobytes() for x in other.images}
    assert len(train_bytes) == len(a)


def test_cell_contents_are_what_each_patch_shows():
    """cell_contents follows the ViT's patch order (PatchEmbed with an identity projection hands
    out each patch's pixels) and names what each patch shows: background has no bright pixel; an
    object's patch shows its content's template (the tint of a tinted twin included), a dotted
    content its white corner, a faded object its plain twin's."""
    ds = SyntheticObjects("val", num_images=600, seed=3)
    n = len(ds)
    contents = ds.cell_contents()
    embed = vit.PatchEmbed(patch_size=8, channels=3, width=3 * 8 * 8)
    with torch.no_grad():
        embed.proj.weight.copy_(torch.eye(3 * 8 * 8).view(3 * 8 * 8, 3, 8, 8))
        embed.proj.bias.zero_()
        patches = embed(ds.images.float() / 255).view(n, 16, 3, 8, 8)  # (n, N, 3, P, P)
    assert contents.shape == (n, 16)
    assert ((contents != synthetic.BACKGROUND).sum(1) == synthetic.OBJECTS_PER_IMAGE).all()
    bright = patches.amax((2, 3, 4))  # (n, N)
    assert bright[contents == synthetic.BACKGROUND].max() < 0.45
    assert bright[contents != synthetic.BACKGROUND].min() > 0.6
    colour, alpha = synthetic._object_templates()
    for t in range(len(synthetic.OBJECT_NAMES)):  # each content looks like its own template
        shown = patches[contents == t]  # (m, 3, P, P)
        inside = alpha[t, 0] > 0
        mean = shown[:, :, inside].mean((0, 2))  # (3,) the shape's colour, brightness ~0.95
        assert len(shown) > 10 and (mean - colour[t][:, inside].mean(1)).abs().max() < 0.08, t
    corner = patches[..., 0, 0].mean(-1)  # (n, N) grey level of the dot's pixel
    dotted = torch.isin(contents, torch.tensor(synthetic.DOTTED_TYPES))
    assert corner[dotted].min() > 0.7 and corner[~dotted].max() < 0.45
    rows, k = ds.faded.nonzero(as_tuple=True)  # a faded object's cell: its plain twin
    assert len(rows) > 10
    assert torch.equal(contents[rows, ds.cells[rows, k]], ds.objects[rows, k] - 1)
