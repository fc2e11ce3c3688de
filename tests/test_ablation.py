"""ablation.py: the paper's ablation table by one command, on a tiny synthetic run."""
import json

import pytest

import ablation
import train

TINY = ["--dataset", "synthetic", "--max-per-class", "12", "--model", "micro", "--batch-size", "20",
        "--device", "cpu", "--num-objects", "16", "--epochs", "1"]


def test_ablation_table_rows_and_rerun(tmp_path, monkeypatch):
    out = tmp_path / "ablation"
    report = ablation.main(TINY + ["--out-dir", str(out)])
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == [name for name, _, _ in ablation.ROWS] + ["baseline ViT (p_V)"]
    assert [r["paper_top1"] for r in report["rows"]] == [84.80, 84.25, 84.74, 84.77, 82.58, 84.40]
    # every row sits on the same frozen backbone: the same p_V
    assert len({r["top1_visual"] for r in report["rows"]}) == 1
    # w/o integration, p_O is p_N
    no_int = rows["w/o integration (p_N alone)"]
    assert no_int["top1"] == no_int["top1_nonvisual"]
    # each row's run used its switch, and only it
    for switch, field, value in (("no-disconnect", "disconnect", False),
                                 ("no-diversity", "diversity", False),
                                 ("pos-embed", "pos_embed", True),
                                 ("no-integrate", "integrate", False)):
        llb = json.loads((out / switch / "metrics.jsonl").read_text().splitlines()[0])["recipe"]["llb"]
        assert llb[field] is value
        assert sum(llb[f] is not d for f, d in (("disconnect", True), ("diversity", True),
                                                ("pos_embed", False), ("integrate", True))) == 1
    assert json.loads((out / "ablation.json").read_text()) == json.loads(json.dumps(report))
    table = (out / "ablation.md").read_text()
    assert "| w/o visual disconnection | 84.25 |" in table and "python ablation.py" in table

    # run again: every finished row is read back, nothing is trained
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(train, "main", no_training)
    assert ablation.main(TINY + ["--out-dir", str(out)])["rows"] == report["rows"]


def test_options_ablation_sets_itself_are_refused(capsys):
    with pytest.raises(SystemExit):
        ablation.parse_args(["--no-diversity"])
    assert "--no-diversity is set by ablation.py for each row" in capsys.readouterr().err
