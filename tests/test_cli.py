"""The CLI end to end on a temporary CSV, and every kind of user mistake: exit 2, one line."""

import json

import pytest

from recsys_metric.cli import main

from .conftest import checkerboard


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    d = checkerboard(40, 20)
    p = tmp_path_factory.mktemp("data") / "ratings.csv"
    df = d.to_frame().rename(columns={"user": "user_id", "item": "item_id"})
    df["rating"] = 5
    df.to_csv(p, index=False)
    names = tmp_path_factory.mktemp("data") / "items.csv"
    names.write_text("item_id,title\n" + "".join(f"i{i},Book {i}\n" for i in range(20)))
    return p, names


TRAIN = ["--dim", "8", "--epochs", "10", "--n-negatives", "5", "--batch-size", "64", "--quiet"]


def test_train_recommend_similar_json(tmp_path, csv_path, capsys):
    ratings, names = csv_path
    out = tmp_path / "model"
    assert main(["train", str(ratings), "--out", str(out), "--items", str(names), *TRAIN]) == 0
    capsys.readouterr()
    assert main(["recommend", str(out), "--user", "u0", "-k", "3", "--json",
                 "--keep-liked"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["user"] == "u0" and len(rec["items"]) == 3
    assert all(int(it["item"][1:]) < 10 and it["name"] == f"Book {it['item'][1:]}"
               for it in rec["items"])
    scores = [it["score"] for it in rec["items"]]
    assert scores == sorted(scores, reverse=True)
    assert main(["similar", str(out), "--item", "i15", "-k", "2"]) == 0
    assert "Book" in capsys.readouterr().out


def test_evaluate_writes_the_json_contract(tmp_path, csv_path, capsys):
    ratings, _ = csv_path
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(ratings), "-k", "5", "10", "--models", "cml,popularity,bpr",
                 "--json", str(js), *TRAIN]) == 0
    res = json.loads(js.read_text())
    assert res["protocol"] == "leave-last-out" and res["k"] == [5, 10]
    assert res["split"]["users"] == 40 and res["split"]["test"] == 40
    assert res["split"]["train"] + res["split"]["test"] == 40 * 10
    for name in ("cml", "popularity", "bpr"):
        m = res["models"][name]
        for key in ("HR@5", "HR@10", "NDCG@10", "Recall@10", "MRR", "fit_seconds"):
            assert isinstance(m[key], float)
    assert res["models"]["cml"]["HR@10"] > res["models"]["popularity"]["HR@10"]
    assert "| cml |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["train", "missing.csv", "--out", "M"], "missing.csv: no such file"),
    (["recommend", "nowhere", "--user", "1"], "not a recsys-metric model directory"),
    (["evaluate", "RATINGS", "--models", "cml,knn"], "unknown model(s) knn"),
    (["train", "RATINGS", "--out", "M", "--dim", "0"], "dim must be an integer >= 1"),
    (["train", "RATINGS", "--out", "M", "--config", "nope.json"], "nope.json: cannot read"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, csv_path, capsys, argv, needle):
    argv = [a.replace("RATINGS", str(csv_path[0])).replace("M", str(tmp_path / "m"))
            if a in ("RATINGS", "M") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_unknown_user_and_bad_rows(tmp_path, csv_path, capsys):
    ratings, _ = csv_path
    out = tmp_path / "model"
    assert main(["train", str(ratings), "--out", str(out), *TRAIN]) == 0
    assert main(["recommend", str(out), "--user", "ghost"]) == 2
    assert "unknown user id 'ghost'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating\nu1,i1,5\nu2,i2,five\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "m2"), *TRAIN]) == 2
    assert "bad.csv: row 3, column 'rating'" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["recommend", "x", "--user", "1", "-k", "0"])
    assert e.value.code == 2
