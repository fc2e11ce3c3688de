"""ablation.py: the paper's ablation table by one command, on tiny synthetic runs, N seeds."""
import json
import statistics

import pytest

import ablation
import train

TINY = ["--dataset", "synthetic", "--max-per-class", "12", "--model", "micro", "--batch-size", "20",
        "--device", "cpu", "--num-objects", "16", "--epochs", "1"]


def recipe_of(folder):
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])["recipe"]


def test_ablation_table_over_two_seeds_derived_rows_and_rerun(tmp_path, monkeypatch):
    out = tmp_path / "ablation"
    report = ablation.main(TINY + ["--seeds", "2", "--out-dir", str(out)])
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ([name for name, _, _ in ablation.ROWS]
                          + [name for name, _, _ in ablation.DERIVED] + [ablation.SAME_EPOCHS])
    assert [r["paper_top1"] for r in report["rows"]] == [84.80, 84.25, 84.74, 84.77, 82.58, 84.40,
                                                         None]
    # every row: one run per seed, and its mean and sample standard deviation over them
    for r in report["rows"]:
        assert [run["seed"] for run in r["runs"]] == [0, 1]
        values = [run["top1"] for run in r["runs"]]
        assert r["top1"] == pytest.approx(statistics.fmean(values))
        assert r["top1_std"] == pytest.approx(statistics.stdev(values))
    for s in (0, 1):
        seed = out / f"seed{s}"
        # one backbone per seed, trained with that seed; every LLB run of the seed sits on it
        assert recipe_of(seed / "backbone")["seed"] == s
        for _, switch, _ in ablation.ROWS:
            folder = seed / (switch.lstrip("-") if switch else "full")
            r = recipe_of(folder)
            assert (r["seed"], r["backbone"]) == (s, str(seed / "backbone" / "last.pt"))
        assert len({rows[name]["runs"][s]["top1_visual"] for name, _, _ in ablation.ROWS}) == 1
        # each switch row used its switch, and only it
        for switch, field, value in (("no-disconnect", "disconnect", False),
                                     ("no-diversity", "diversity", False),
                                     ("pos-embed", "pos_embed", True)):
            llb = recipe_of(seed / switch)["llb"]
            assert llb[field] is value
            assert sum(llb[f] is not d for f, d in (("disconnect", True), ("diversity", True),
                                                    ("pos_embed", False), ("integrate", True))) == 1
        # w/o integration and the baseline are the full run's p_N and p_V: nothing retrained
        full = rows["LLB (all parts)"]["runs"][s]
        assert rows["w/o integration (p_N alone)"]["runs"][s]["top1"] == full["top1_nonvisual"]
        assert rows["baseline ViT (p_V)"]["runs"][s]["top1"] == full["top1_visual"]
        assert not (seed / "no-integrate").exists()
        # the ViT trained as long as both stages (1 + 1 epochs), same data and seed, no LLB
        longer = recipe_of(seed / "vit_same_epochs")
        assert (longer["stage"], longer["epochs"], longer["seed"]) == ("vit", 2, s)
        assert longer["max_per_class"] == 12 and longer["llb"] is None
    assert json.loads((out / "ablation.json").read_text()) == json.loads(json.dumps(report))
    table = (out / "ablation.md").read_text()
    full = rows["LLB (all parts)"]
    assert f"| LLB (all parts) | 84.80 | {full['top1']:.2f} +- {full['top1_std']:.2f} |" in table
    assert "| w/o integration (p_N alone) | 82.58 |" in table and "--seeds 2" in table

    # run again: every finished run is read back, nothing is trained
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(train, "main", no_training)
    again = ablation.main(TINY + ["--seeds", "2", "--out-dir", str(out)])
    assert again["rows"] == report["rows"]


def test_a_given_backbone_has_no_same_epochs_row_and_one_seed_no_std(tmp_path):
    vit = tmp_path / "vit"
    train.main(TINY + ["--method", "vit", "--out-dir", str(vit)])
    out = tmp_path / "ablation"
    report = ablation.main(TINY + ["--backbone", str(vit / "last.pt"), "--out-dir", str(out)])
    names = [r["row"] for r in report["rows"]]
    assert ablation.SAME_EPOCHS not in names and len(names) == 6
    assert not (out / "seed0" / "backbone").exists()
    assert all(r["top1_std"] is None for r in report["rows"])
    assert "+-" not in (out / "ablation.md").read_text()


def test_mean_and_sample_std_as_the_poster_writes_them():
    assert ablation.mean_std([84.75, 84.85]) == pytest.approx((84.80, 0.0707107))
    assert ablation.cell(84.8, 0.05) == "84.80 +- 0.05" and ablation.cell(84.8, None) == "84.80"


def test_options_ablation_sets_itself_are_refused(capsys):
    for own in ("--no-diversity", "--no-integrate", "--seed"):
        with pytest.raises(SystemExit):
            ablation.parse_args([own, "3"] if own == "--seed" else [own])
        assert f"{own} is set by ablation.py for each row" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.parse_args(["--seeds", "0"])
    assert "--seeds must be >= 1, got 0" in capsys.readouterr().err
