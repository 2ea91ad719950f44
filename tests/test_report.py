"""compare + report end to end on a tiny checkerboard: files, JSON contract, CIs, paired tests."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from recsys_metric.cli import main
from recsys_metric.compare import json_ready, per_user_frame, run_comparison
from recsys_metric.report import main_k, markdown_tables, paired_table, write_report
from recsys_metric.train import TrainConfig

from .conftest import checkerboard

TRAIN = ["--dim", "8", "--epochs", "5", "--n-negatives", "5", "--batch-size", "64", "--quiet"]
CONTRACT = {"dataset", "protocol", "k", "split", "models"}
SPLIT_KEYS = {"users", "items", "train", "test"}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    d = checkerboard(40, 20)
    p = tmp_path_factory.mktemp("data") / "ratings.csv"
    df = d.to_frame().rename(columns={"user": "user_id", "item": "item_id"})
    df["rating"] = 5
    df.to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def compared(ratings, tmp_path_factory):
    """One `compare` run shared by the checks below (the expensive part)."""
    out = tmp_path_factory.mktemp("report")
    per_user = out.parent / "per_user_copy.csv"
    argv = ["compare", str(ratings), "--models", "cml,popularity,bpr", "--out", str(out),
            "-k", "1", "5", "10", "--n-boot", "200", "--per-user", str(per_user), *TRAIN]
    assert main(argv) == 0
    return out, per_user, argv


def test_compare_writes_every_file(compared, capsys):
    out, per_user, _ = compared
    for name in ("report.md", "results.json", "hr_ndcg_at_k.png", "cml_validation.png",
                 "per_user.csv"):
        assert (out / name).is_file(), name
    for png in ("hr_ndcg_at_k.png", "cml_validation.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, png
    assert per_user.is_file()


def test_results_json_keeps_the_contract_and_adds_cis(compared):
    out, _, argv = compared
    res = json.loads((out / "results.json").read_text())
    assert CONTRACT <= set(res)
    assert res["protocol"] == "leave-last-out" and res["k"] == [1, 5, 10]
    assert SPLIT_KEYS <= set(res["split"]) and res["split"]["test"] == 40
    assert set(res["models"]) == {"cml", "popularity", "bpr"}
    for name, m in res["models"].items():
        for k in (1, 5, 10):
            for metric in ("HR", "NDCG", "Recall"):
                key = f"{metric}@{k}"
                assert isinstance(m[key], float)
                lo, hi = m[f"{key}_ci"]
                assert lo - 1e-12 <= m[key] <= hi + 1e-12, (name, key)
                assert 0.0 <= lo <= hi <= 1.0
        assert isinstance(m["MRR"], float) and isinstance(m["fit_seconds"], float)
        assert 0.0 <= m["AUC"] <= 1.0 and m["AUC_ci"][0] <= m["AUC"] <= m["AUC_ci"][1]
        assert m["Novelty@10"] >= 1.0
    # The checkerboard is easy: CML finds each user's half; popularity cannot.
    assert res["models"]["cml"]["HR@5"] > res["models"]["popularity"]["HR@5"]
    assert res["command"].startswith("recsys-metric compare") and "--n-boot 200" in res["command"]
    assert res["config"]["patience"] == 5 and res["config"]["dim"] == 8
    assert res["stats"]["n_boot"] == 200


def test_paired_section_compares_every_model_with_cml(compared):
    out, _, _ = compared
    res = json.loads((out / "results.json").read_text())
    assert set(res["paired"]) == {"popularity", "bpr"}
    t = res["paired"]["popularity"]["NDCG@5"]
    cml, pop = res["models"]["cml"]["NDCG@5"], res["models"]["popularity"]["NDCG@5"]
    assert t["diff"] == pytest.approx(cml - pop) and t["cml"] == pytest.approx(cml)
    assert t["diff"] > 0 and t["ci"][0] > 0 and t["p_value"] < 0.01
    assert t["n"] == 40 and t["wilcoxon_p"] < 0.01
    assert "Novelty@10" not in res["paired"]["bpr"]


def test_cml_validation_curve_is_recorded(compared):
    out, _, _ = compared
    res = json.loads((out / "results.json").read_text())
    val = res["validation"]["cml"]
    assert 1 <= val["best_epoch"] <= 5
    assert [h["epoch"] for h in val["history"]] == list(range(1, len(val["history"]) + 1))
    assert all(0.0 <= h["val_NDCG@10"] <= 1.0 for h in val["history"])


def test_report_md_has_tables_paired_tests_and_command(compared):
    out, _, argv = compared
    md = (out / "report.md").read_text()
    for needle in ("## Split", "## Protocol", "leave-last-out", "### K = 1", "### K = 5",
                   "### K = 10", "| cml |", "| popularity |", "fit s", " ± ",
                   "## Paired tests against CML", "p (Wilcoxon)", "](hr_ndcg_at_k.png)",
                   "](cml_validation.png)", "recsys-metric compare", "best epoch"):
        assert needle in md, needle


def test_per_user_csv_rows(compared):
    out, per_user, _ = compared
    df = pd.read_csv(out / "per_user.csv", dtype={"user": str})
    assert len(df) == 40 * 3  # every test user, every model
    assert set(df["model"]) == {"cml", "popularity", "bpr"}
    assert set(df["user"]) == {f"u{i}" for i in range(40)}
    assert {"n_test", "HR@10", "NDCG@5", "MRR", "AUC", "Novelty@1"} <= set(df.columns)
    res = json.loads((out / "results.json").read_text())
    for name, g in df.groupby("model"):
        assert g["HR@10"].mean() == pytest.approx(res["models"][name]["HR@10"])
    assert pd.read_csv(per_user).shape == df.shape


def test_compare_prints_the_table_and_where_the_report_went(ratings, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["compare", str(ratings), "--models", "popularity", "--out", str(out),
                 "-k", "5", "--n-boot", "50", *TRAIN]) == 0
    text = capsys.readouterr().out
    assert "| popularity |" in text and "K = 5" in text and str(out / "report.md") in text
    md = (out / "report.md").read_text()
    assert "No CML validation curve" in md  # CML not compared: no curve, no stale PNG
    assert not (out / "cml_validation.png").exists()


def test_write_report_without_cis_or_validation(tmp_path):
    data = checkerboard(20, 10)
    cfg = TrainConfig(dim=8, epochs=3, n_negatives=5, batch_size=64)  # patience 0
    res = run_comparison(data, models=("cml", "popularity"), k=(1, 5), config=cfg,
                         show_progress=False)
    # Without n_boot the result is the contract, the task and CML's config: no CIs.
    assert set(res) == CONTRACT | {"task", "cml_config"}
    assert not any(key.endswith("_ci") for key in res["models"]["cml"])
    paths = write_report(res, tmp_path / "r")
    assert set(paths) == {"results", "plot_k", "report"}
    md = paths["report"].read_text()
    assert "Not computed" in md and "No CML validation curve" in md and " ± " not in md
    assert json.loads(paths["results"].read_text()) == json_ready(res)
    assert paired_table(res) == ""
    with pytest.raises(ValueError, match="per_user=True"):
        per_user_frame(res)


def test_run_comparison_per_user_arrays_and_json_ready():
    data = checkerboard(20, 10)
    cfg = TrainConfig(dim=8, epochs=3, n_negatives=5, batch_size=64)
    res = run_comparison(data, models=("popularity",), k=(2,), config=cfg, per_user=True,
                         n_boot=50, show_progress=False)
    pu = res["per_user"]["popularity"]
    assert list(pu["user"][:2]) == ["u0", "u1"] and len(pu["HR@2"]) == 20
    assert "paired" not in res  # nothing to pair without CML
    clean = json_ready(res)
    assert "per_user" not in clean
    json.dumps(clean, allow_nan=False)  # strict JSON
    assert "HR@2" in markdown_tables(res) and main_k([1, 5, 20]) == 5 and main_k([5, 10]) == 10


def test_json_ready_turns_nan_into_null():
    assert json_ready({"models": {"m": {"AUC": math.nan, "AUC_ci": [math.nan, 1.0]}}}) == {
        "models": {"m": {"AUC": None, "AUC_ci": [None, 1.0]}}}
