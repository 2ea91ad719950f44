"""evaluate / compare with the temporal cut, pre-split files, sampled negatives and the Annoy index,
end to end through the CLI; every user mistake exits 2 with one line naming the file and line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys_metric.cli import main

from .conftest import checkerboard

TRAIN = ["--dim", "8", "--epochs", "10", "--n-negatives", "5", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("protocols")
    # 40 checkerboard users, interleaved over time 0..399, then 2 newcomers (u40, u41) and a new
    # item (i99) after every other interaction: unseen in train by any cut before them.
    df = checkerboard(40, 20).to_frame()
    df["timestamp"] = np.random.default_rng(0).permutation(len(df))
    late = pd.DataFrame({"user": ["u40", "u41", "u0", "u1"], "item": ["i0", "i99", "i99", "i99"],
                         "timestamp": [1000, 1001, 1002, 1003]})
    ratings = d / "ratings.csv"
    pd.concat([df, late]).to_csv(ratings, index=False)
    # The same board as LightGCN files: the last item of each line is test (a different item
    # for each user: every item stays in train); user 40 is new.
    board = checkerboard(40, 20)
    rows = {}
    for u, i in zip(board.to_frame()["user"], board.to_frame()["item"], strict=True):
        rows.setdefault(int(u[1:]), []).append(int(i[1:]))
    rows = {u: sorted(its, key=lambda i: (i - u) % 10) for u, its in rows.items()}
    train, test = d / "train.txt", d / "test.txt"
    train.write_text("".join(f"{u} {' '.join(map(str, its[:-1]))}\n" for u, its in rows.items()))
    test.write_text("".join(f"{u} {its[-1]}\n" for u, its in rows.items())
                    + f"40 1\n0 {rows[0][0]}\n")  # a new user; a test pair also in train
    neg = d / "board.test.negative"
    neg.write_text("".join(f"({u},{its[-1]})\t"
                           + "\t".join(str(i) for i in range(20) if i not in its) + "\n"
                           for u, its in rows.items()))
    return {"ratings": ratings, "train": train, "test": test, "neg": neg, "dir": d}


def test_temporal_cut_reports_unseen_users_and_items(files, tmp_path, capsys):
    js = tmp_path / "t.json"
    assert main(["evaluate", str(files["ratings"]), "--protocol", "temporal", "--cut", "0.9",
                 "--models", "popularity", "-k", "5", "--json", str(js), "--quiet"]) == 0
    out = capsys.readouterr().out
    s = json.loads(js.read_text())["split"]
    assert s["test_unseen_users"] == 2 and s["test_unseen_items"] == 1
    assert s["test_pairs_unseen"] == 4 and s["test_pairs_total"] == s["test"] + 4
    assert s["users"] == 40 and s["items"] == 20 and s["data_users"] == 42
    assert s["cut"] == 0.9 and s["unseen"].startswith("dropped")
    assert "Test ids unseen in train: 2 users, 1 items; 4 of" in out
    # A timestamp cut: everything after 1000 is test; only u0/u1-i99 and u41 are left: none
    # rankable, a clear error.
    assert main(["evaluate", str(files["ratings"]), "--protocol", "temporal", "--cut", "999",
                 "--models", "popularity", "--quiet"]) == 2
    assert "no test pair left to evaluate" in capsys.readouterr().err


def test_presplit_lightgcn_files_with_sampled_negatives(files, tmp_path, capsys):
    js = tmp_path / "p.json"
    assert main(["evaluate", "--train", str(files["train"]), "--test", str(files["test"]),
                 "--negatives", str(files["neg"]), "--models", "popularity,bpr", "-k", "5",
                 "--json", str(js), "--quiet"]) == 0
    captured = capsys.readouterr()
    res = json.loads(js.read_text())
    assert res["protocol"] == "pre-split" and res["dataset"] == str(files["train"])
    s = res["split"]
    assert s["format"] == "lightgcn" and s["test_pairs_in_train"] == 1
    assert (s["test_unseen_users"], s["test_unseen_items"], s["test_pairs_unseen"]) == (1, 0, 1)
    assert s["users"] == 40 and s["test"] == 41
    assert res["sampled"]["users"] == 40 and res["sampled"]["negatives_per_user"] == 10
    for name in ("popularity", "bpr"):
        m = res["models"][name]
        for key in ("HR@5", "NDCG@5", "sampled_HR@5", "sampled_NDCG@5", "sampled_MRR"):
            assert isinstance(m[key], float), (name, key)
        # Here the negatives are every item the user lacks: the same candidates as full ranking.
        for key in ("HR@5", "NDCG@5", "Recall@5", "MRR"):
            assert m[f"sampled_{key}"] == pytest.approx(m[key]), (name, key)
    assert "Krichene & Rendle" in captured.err and "sampled_HR@5" in captured.out


def test_sample_negatives_and_annoy_index(files, tmp_path, capsys):
    js = tmp_path / "a.json"
    assert main(["evaluate", str(files["ratings"]), "--models", "cml,popularity", "-k", "5",
                 "--sample-negatives", "5", "--index", "annoy", "--json", str(js),
                 *TRAIN]) == 0
    out = capsys.readouterr().out
    res = json.loads(js.read_text())
    cml = res["models"]["cml"]
    for key in ("annoy_HR@5", "annoy_NDCG@5", "annoy_recall_vs_exact@5", "annoy_search_k"):
        assert key in cml
    assert "annoy_HR@5" not in res["models"]["popularity"]
    assert abs(cml["annoy_HR@5"] - cml["HR@5"]) <= 0.1
    assert cml["annoy_recall_vs_exact@5"] >= 0.9
    assert res["sampled"]["negatives_per_user"] == 5
    assert "Annoy index" in out and "sampled_HR@5" in out


def test_compare_presplit_report_mentions_protocols(files, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "--train", str(files["train"]), "--test", str(files["test"]),
                 "--sample-negatives", "5", "--models", "popularity", "-k", "5", "--n-boot",
                 "20", "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text()
    assert "**pre-split**" in md and "test users unseen in train: 1," in md
    assert "Sampled protocol" in md and "Krichene" in md
    res = json.loads((out / "results.json").read_text())
    assert "sampled_HR@5" in res["models"]["popularity"]
    assert "Krichene" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["evaluate"], "give a RATINGS file, or --train and --test"),
    (["evaluate", "--train", "TRAIN"], "--train and --test go together"),
    (["evaluate", "RATINGS", "--train", "TRAIN", "--test", "TEST"], "not both"),
    (["evaluate", "--train", "TRAIN", "--test", "TEST", "--protocol", "random"],
     "--protocol does not apply to --train/--test"),
    (["evaluate", "RATINGS", "--cut", "0.5"], "--cut applies to --protocol temporal only"),
    (["evaluate", "RATINGS", "--protocol", "temporal", "--cut", "later"], "--cut expects"),
    (["evaluate", "RATINGS", "--negatives", "NEG", "--sample-negatives", "3"],
     "give one, not both"),
    (["evaluate", "RATINGS", "--negatives", "nowhere.negative"],
     "nowhere.negative: no such file"),
    (["evaluate", "RATINGS", "--models", "popularity", "--index", "annoy"],
     "needs cml among the models"),
    (["evaluate", "--train", "missing.txt", "--test", "TEST"], "missing.txt: no such file"),
    (["compare", "--train", "TRAIN", "--out", "OUT"], "--train and --test go together"),
    (["evaluate", "--train", "TRAIN", "--test", "TEST", "--models", "popularity",
      "--negatives", "BADNEG"], "bad.negative: line 2: expected '(user,item)'"),
    (["evaluate", "--train", "TRAIN", "--test", "TEST", "--models", "popularity",
      "--negatives", "UNKNEG"], "unk.negative: line 1: unknown user id '99'"),
])
def test_protocol_mistakes_exit_2_with_one_line(files, tmp_path, capsys, argv, needle):
    bad = tmp_path / "bad.negative"
    bad.write_text("(0,1)\t2\t3\n0,1\t2\n")
    unk = tmp_path / "unk.negative"
    unk.write_text("(99,1)\t77\n")  # an unknown item joins the catalogue; a user cannot
    subst = {"RATINGS": str(files["ratings"]), "TRAIN": str(files["train"]),
             "TEST": str(files["test"]), "NEG": str(files["neg"]), "BADNEG": str(bad),
             "UNKNEG": str(unk), "OUT": str(tmp_path / "out")}
    assert main([subst.get(a, a) for a in argv] + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


def test_published_files_rank_items_no_train_row_has(tmp_path, capsys):
    """NCF-style files whose test and negatives files name items without train interactions
    (ml-1m.test.negative does): every model fits and ranks them; the JSON counts them."""
    board = checkerboard(40, 20).to_frame()
    d = tmp_path
    board.to_csv(d / "train.csv", index=False)
    # each user's test item is new (i20..i22) for a third of the users, else a board item
    # they lack; negatives add items i30..i34 that appear nowhere else
    test = pd.DataFrame({"user": [f"u{u}" for u in range(40)],
                         "item": [f"i{20 + u // 3 % 3}" if u % 3 == 0 else f"i{(u + 10) % 20}"
                                  for u in range(40)]})
    test = test[~test.apply(tuple, axis=1).isin(set(board.apply(tuple, axis=1)))]
    test.to_csv(d / "test.csv", index=False)
    (d / "t.negative").write_text("".join(
        f"({u},{i})\t" + "\t".join(f"i{30 + k}" for k in range(5)) + "\n"
        for u, i in zip(test["user"], test["item"], strict=True)))
    js = d / "r.json"
    assert main(["evaluate", "--train", str(d / "train.csv"), "--test", str(d / "test.csv"),
                 "--negatives", str(d / "t.negative"), "--models", "cml,popularity,als,bpr",
                 "-k", "10", "--json", str(js), *TRAIN]) == 0
    res = json.loads(js.read_text())
    s = res["split"]
    n_new = int(test["item"].isin(["i20", "i21", "i22"]).sum())
    assert s["items"] == s["catalogue_items"] == 20 + 3 + 5 and s["items_without_train"] == 8
    assert s["negative_items_without_train"] == 5 and s["test_unseen_items"] == 3
    assert s["test_pairs_item_without_train"] == n_new and s["test"] == len(test)
    # no timestamps in the test file: not the next item; tuning would carve a random split
    assert res["task"]["task"] == "any" and res["task"]["validation"] == "random"
    for m in res["models"].values():
        assert 0 <= m["HR@10"] <= 1 and 0 <= m["sampled_HR@10"] <= 1
    assert "Catalogue: 28 items, 8 of them without train interactions" in capsys.readouterr().out
