"""The CLI end to end on a temporary CSV, and every kind of user mistake: exit 2, one line."""

import json
import warnings

import pytest

from recsys_metric import TimeOrderWarning
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


def test_evaluate_per_user_csv(tmp_path, csv_path, capsys):
    import pandas as pd

    ratings, _ = csv_path
    js, pu = tmp_path / "eval.json", tmp_path / "out" / "per_user.csv"
    assert main(["evaluate", str(ratings), "-k", "5", "--models", "popularity,bpr",
                 "--json", str(js), "--per-user", str(pu), *TRAIN]) == 0
    assert f"wrote per-user metrics to {pu}" in capsys.readouterr().out
    df = pd.read_csv(pu, dtype={"user": str})
    assert list(df.columns[:3]) == ["user", "model", "n_test"]
    assert len(df) == 2 * 40 and set(df["model"]) == {"popularity", "bpr"}
    assert set(df["user"]) == {f"u{i}" for i in range(40)}
    res = json.loads(js.read_text())
    assert "per_user" not in res
    for name, g in df.groupby("model"):
        for key in ("HR@5", "NDCG@5", "MRR", "AUC"):
            assert g[key].mean() == pytest.approx(res["models"][name][key]), (name, key)


@pytest.mark.parametrize("argv, needle", [
    (["train", "missing.csv", "--out", "M"], "missing.csv: no such file"),
    (["recommend", "nowhere", "--user", "1"], "nowhere: no such model directory"),
    (["evaluate", "RATINGS", "--models", "cml,knn"], "unknown model(s) knn"),
    (["train", "RATINGS", "--out", "M", "--dim", "0"], "dim must be an integer >= 1"),
    (["train", "RATINGS", "--out", "M", "--config", "nope.json"], "nope.json: cannot read"),
    (["compare", "RATINGS", "--out", "M", "--models", "cml,knn"], "unknown model(s) knn"),
    (["compare", "RATINGS", "--out", "M", "--alpha", "1.5"], "--alpha must be in (0, 1)"),
    (["compare", "missing.csv", "--out", "M"], "missing.csv: no such file"),
    (["evaluate", "RATINGS", "--per-user", "DIR"], "--per-user expects a file path"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, csv_path, capsys, argv, needle):
    subst = {"RATINGS": str(csv_path[0]), "M": str(tmp_path / "m"), "DIR": str(tmp_path)}
    argv = [subst.get(a, a) for a in argv]
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


def test_compare_out_must_be_a_directory(tmp_path, csv_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["compare", str(csv_path[0]), "--out", str(f), "--models", "popularity"]) == 2
    err = capsys.readouterr().err
    assert "--out must be a directory" in err and "Traceback" not in err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["recommend", "x", "--user", "1", "-k", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["compare", "x", "--out", "d", "--n-boot", "0"])
    assert e.value.code == 2


def test_demo_end_to_end(tmp_path, capsys):
    from recsys_metric.recommender import Recommender

    out = tmp_path / "books"
    assert main(["demo", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("== Top 10 for user") == 3 and "latest:" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and "HR@10" not in line}
    assert set(rows) == {"cml", "popularity", "als", "bpr"}
    assert len(Recommender.load(out).recommend("u0001", N=10)[0]) == 10


def test_train_says_when_the_time_order_is_missing(tmp_path, csv_path, capsys):
    ratings, _ = csv_path  # user_id,item_id,timestamp,rating
    assert main(["train", str(ratings), "--out", str(tmp_path / "m1"), *TRAIN]) == 0
    assert "no timestamps" not in capsys.readouterr().out
    untimed = tmp_path / "untimed.csv"
    untimed.write_text("".join(line.rsplit(",", 2)[0] + "\n"
                               for line in ratings.read_text().splitlines()))
    assert untimed.read_text().startswith("user_id,item_id\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", str(untimed), "--out", str(tmp_path / "m2"), *TRAIN]) == 0
    assert "no timestamps" in capsys.readouterr().out
    assert not [w for w in caught if w.category is TimeOrderWarning]  # a note, not a warning


def test_the_task_is_read_from_the_split_and_sets_the_time_order(csv_path, tmp_path, capsys):
    from recsys_metric.train import TIME_BLIND

    ratings, _ = csv_path
    js = tmp_path / "r.json"

    def run(*extra):
        assert main(["evaluate", str(ratings), "--models", "cml,popularity", "--json", str(js),
                     *TRAIN, *extra]) == 0
        out = capsys.readouterr().out
        res = json.loads(js.read_text())
        return res["task"], {k: res["cml_config"][k] for k in TIME_BLIND}, out

    task, cfg, out = run("--protocol", "random")  # a random holdout: not the next item
    assert task["task"] == "any" and task["share_after"] < 0.5 and cfg == TIME_BLIND
    assert "task: any" in out and "--task next to override" in out
    task, cfg, out = run()  # leave-last-out: each user's next item, the time order on
    assert task["task"] == "next" and task["test_items_per_user"] == 1
    assert cfg["recent_pull"] > 0 and cfg["transitions"] > 0 and "task: next" in out
    task, cfg, _ = run("--protocol", "random", "--task", "next")  # asked: as asked
    assert task == {**task, "task": "next", "reason": "as asked"} and cfg["recent_pull"] > 0
    for flag in (["--time-blind"], ["--task", "any"]):
        assert run(*flag)[1] == TIME_BLIND
    # a value given explicitly stays whatever the task
    assert run("--protocol", "random", "--recent-pull", "0.3")[1]["recent_pull"] == 0.3
    assert main(["evaluate", str(ratings), "--time-blind", "--task", "next", *TRAIN]) == 2
    assert "contradict" in capsys.readouterr().err
