"""Hyper-parameter tuning: a config train accepts, a fair budget, and the test split never seen."""

import json
import sys

import numpy as np
import pytest

import recsys_metric.evaluation as evaluation
import recsys_metric.tune as tune_mod
from recsys_metric import TrainConfig, Trainer, leave_last_out, read_ratings
from recsys_metric.baselines import _ImplicitMF
from recsys_metric.cli import main
from recsys_metric.tune import check_metric, search_space, tune

from .conftest import checkerboard

TINY = {"epochs": ("int", 1, 3)}
FAST = ["--dim", "8", "--epochs", "3", "--n-negatives", "5", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    # Uneven tastes (density 0.7) so that the leave-last-out test items differ from train ones.
    df = checkerboard(30, 20, density=0.7).to_frame().rename(
        columns={"user": "user_id", "item": "item_id"})
    df["rating"] = 5
    p = tmp_path_factory.mktemp("data") / "ratings.csv"
    df.to_csv(p, index=False)
    return p


def test_tune_cml_returns_a_config_train_accepts():
    board = checkerboard(30, 20)
    res = tune(board, "cml", trials=2, seed=3, show_progress=False,
               base={"batch_size": 64, "patience": 4}, space={**TINY, "dim": 8})
    cfg = TrainConfig.from_dict(res["config"])
    # base fills the fields not searched; the seed defaults to tune's; patience is spent.
    assert cfg.patience == 0 and cfg.batch_size == 64 and cfg.dim == 8 and cfg.seed == 3
    assert 1 <= cfg.epochs <= 3 and cfg.epochs == res["best_params"]["epochs"]
    assert res["model"] == "cml" and res["metric"] == "NDCG@10" and res["n_trials"] == 2
    assert len(res["trials"]) == 2 and 0.0 <= res["best_value"] <= 1.0
    assert res["best_value"] == max(t["value"] for t in res["trials"])
    assert {"margin", "lr", "clip_norm", "init_norm", "n_negatives"} <= set(res["best_params"])
    assert res["history"] and "val_NDCG@10" in res["history"][0]
    json.dumps(res)  # the whole result is JSON


def test_tune_baselines_same_budget_and_seeded():
    board = checkerboard(30, 20)
    als = tune(board, "als", trials=3, seed=1, show_progress=False,
               space={"iterations": ("int", 1, 3)})
    again = tune(board, "als", trials=3, seed=1, show_progress=False,
                 space={"iterations": ("int", 1, 3)})
    assert [t["params"] for t in als["trials"]] == [t["params"] for t in again["trials"]]
    assert set(als["config"]) == {"factors", "regularization", "alpha", "iterations",
                                  "recent_share", "recent_weight", "recent_pull",
                                  "pull_decay", "transitions"}
    assert 1e-3 <= als["config"]["regularization"] <= 1.0
    bpr = tune(board, "bpr", trials=3, seed=1, show_progress=False, metric="HR",
               space={"iterations": 5})
    assert bpr["metric"] == "HR@10" and bpr["n_trials"] == als["n_trials"] == 3
    assert all(t["params"]["iterations"] == 5 for t in bpr["trials"])


def test_tune_ease_closed_form_one_fit_per_trial():
    board = checkerboard(30, 20)
    res = tune(board, "ease", trials=3, seed=2, show_progress=False)
    assert res["model"] == "ease" and res["n_trials"] == 3 and len(res["trials"]) == 3
    assert set(res["config"]) == {"l2"} and 1.0 <= res["config"]["l2"] <= 1e4  # no seed
    assert res["best_value"] == max(t["value"] for t in res["trials"]) and "history" not in res
    again = tune(board, "ease", trials=3, seed=2, show_progress=False)
    assert [(t["params"], t["value"]) for t in again["trials"]] == \
        [(t["params"], t["value"]) for t in res["trials"]]  # TPE seeded, EASE deterministic
    fixed = tune(board, "ease", trials=1, show_progress=False, space={"l2": 7.0})
    assert fixed["config"] == {"l2": 7.0}


def test_compare_tunes_ease_like_the_others(monkeypatch):
    from recsys_metric.baselines import EASE
    from recsys_metric.compare import run_comparison

    fits = []  # (l2, train size) of every EASE fit
    real_fit = EASE.fit
    monkeypatch.setattr(EASE, "fit", lambda self, tr: fits.append((self.l2, tr.nnz)) or
                        real_fit(self, tr))
    board = checkerboard(30, 20, density=0.7)
    res = run_comparison(board, models=("popularity", "ease"), tune_trials=2,
                         show_progress=False)
    assert set(res["tuned"]) == {"ease"}  # popularity has nothing to tune
    tuned = res["tuned"]["ease"]
    assert tuned["n_trials"] == 2 and set(tuned["config"]) == {"l2"}
    assert "validation" not in res and np.isfinite(res["models"]["ease"]["NDCG@10"])
    # two trials on the carved fit part, then the tuned l2 refit on the whole train part
    assert [l2 for l2, _ in fits] == [t["params"]["l2"] for t in tuned["trials"]] + \
        [tuned["config"]["l2"]]
    assert fits[-1][1] == res["split"]["train"] > fits[0][1]


def test_bad_arguments_raise_clear_errors():
    board = checkerboard(10, 10)
    with pytest.raises(ValueError, match="cannot tune model 'popularity'"):
        tune(board, "popularity")
    with pytest.raises(ValueError, match="cannot tune for metric 'Coverage@10'"):
        check_metric("Coverage@10")
    assert check_metric("NDCG", 20) == "NDCG@20" and check_metric("MRR") == "MRR"
    with pytest.raises(ValueError, match="no tuned hyper-parameter 'depth'"):
        search_space("als", {"depth": 3})
    with pytest.raises(ValueError, match="trials must be"):
        tune(board, "als", trials=0)


def test_missing_optuna_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ValueError, match="pip install optuna"):
        tune(checkerboard(10, 10), "als", trials=1, show_progress=False)


def _pairs(matrix, data) -> set[tuple[str, str]]:
    coo = getattr(matrix, "matrix", matrix).tocoo()  # a matrix or Interactions
    return set(zip(data.users.raw(coo.row), data.items.raw(coo.col), strict=True))


@pytest.mark.parametrize("model", ["cml", "als"])
def test_cli_tune_never_sees_the_test_split(tmp_path, csv_path, monkeypatch, capsys, model):
    data = read_ratings(csv_path)  # the CLI reads the same file: the same id maps
    train, test = leave_last_out(data)
    train_pairs, test_pairs = _pairs(train.matrix, data), _pairs(test.matrix, data)
    assert test_pairs and not train_pairs & test_pairs
    seen: list[set] = []  # every pair any fit or evaluation received

    real_eval = evaluation.evaluate_ranking

    def spy_eval(model_, tr, te, *a, **kw):
        seen.extend([_pairs(tr, data), _pairs(te, data)])
        return real_eval(model_, tr, te, *a, **kw)

    real_fit, real_mf_fit = Trainer.fit, _ImplicitMF.fit

    def spy_fit(self, tr, valid=None):
        seen.append(_pairs(tr, data))
        return real_fit(self, tr, valid)

    def spy_mf_fit(self, tr):
        seen.append(_pairs(tr, data))
        return real_mf_fit(self, tr)

    monkeypatch.setattr(evaluation, "evaluate_ranking", spy_eval)  # Trainer's per-epoch calls
    monkeypatch.setattr(tune_mod, "evaluate_ranking", spy_eval)  # baselines' trials
    monkeypatch.setattr(Trainer, "fit", spy_fit)
    monkeypatch.setattr(_ImplicitMF, "fit", spy_mf_fit)
    out = tmp_path / "best.json"
    flags = FAST if model == "cml" else ["--quiet"]
    assert main(["tune", str(csv_path), "--model", model, "--trials", "2", "--out", str(out),
                 *flags]) == 0
    assert len(seen) >= 4
    for pairs in seen:
        assert pairs <= train_pairs and not pairs & test_pairs
    assert json.loads(out.read_text())
    text = capsys.readouterr().out
    assert "best validation NDCG@10" in text and "best parameters:" in text


def test_cli_tune_writes_a_config_that_train_accepts(tmp_path, csv_path, capsys):
    cfg = tmp_path / "cml.json"
    assert main(["tune", str(csv_path), "--trials", "2", "--out", str(cfg), *FAST]) == 0
    written = json.loads(cfg.read_text())
    assert written["dim"] == 8 and written["epochs"] == 3  # flags given are fixed, not searched
    assert TrainConfig.from_dict(written).patience == 0
    model = tmp_path / "model"
    assert main(["train", str(csv_path), "--config", str(cfg), "--out", str(model),
                 "--quiet"]) == 0
    saved = json.loads((model / "config.json").read_text())["config"]
    assert saved == written
    capsys.readouterr()


def test_cli_tune_keeps_the_time_order_off_for_a_random_holdout(tmp_path, csv_path, capsys):
    from recsys_metric import TIME_BLIND

    cfg = tmp_path / "cml.json"
    assert main(["tune", str(csv_path), "--protocol", "random", "--trials", "3", "--out",
                 str(cfg), *FAST]) == 0
    out = capsys.readouterr().out
    assert "task: any" in out and "carved as random" in out  # validation shaped like the test
    written = json.loads(cfg.read_text())
    assert {k: written[k] for k in TIME_BLIND} == TIME_BLIND  # fixed, not searched
    assert main(["tune", str(csv_path), "--trials", "2", "--out", str(cfg), *FAST]) == 0
    assert "task: next" in capsys.readouterr().out  # leave-last-out: the time order is tuned


@pytest.mark.parametrize("argv, needle", [
    (["tune", "RATINGS", "--model", "knn"], "cannot tune model 'knn'"),
    (["tune", "RATINGS", "--model", "popularity"], "popularity has no hyper-parameters"),
    (["tune", "RATINGS", "--model", "als", "--dim", "8"], "--dim is a CML parameter"),
    (["tune", "RATINGS", "--metric", "Novelty@10"], "cannot tune for metric"),
    (["tune", "RATINGS", "--out", "DIR"], "--out expects a file path"),
])
def test_cli_tune_mistakes_exit_2(tmp_path, csv_path, capsys, argv, needle):
    subst = {"RATINGS": str(csv_path), "DIR": str(tmp_path)}
    assert main([subst.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_compare_tune_records_the_tuned_params(tmp_path, csv_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", str(csv_path), "--out", str(out), "--models", "cml,popularity,bpr",
                 "--tune", "--trials", "2", "-k", "5", "10", "--n-boot", "20", *FAST]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["tuned"]) == {"cml", "bpr"}  # popularity has nothing to tune
    for name, t in res["tuned"].items():
        assert t["n_trials"] == 2 and len(t["trials"]) == 2, name
        assert t["metric"] == "NDCG@10" and 0.0 <= t["validation_value"] <= 1.0
    assert res["tuned"]["cml"]["config"]["dim"] == 8
    assert res["config"] == res["tuned"]["cml"]["config"]  # the report quotes the tuned config
    assert res["validation"]["cml"]["best_epoch"] == res["tuned"]["cml"]["params"]["epochs"]
    assert set(res["tuned"]["bpr"]["params"]) == {"factors", "learning_rate", "regularization",
                                                  "iterations"}
    assert np.isfinite(res["models"]["bpr"]["NDCG@10"])
    md = (out / "report.md").read_text()
    assert "## Tuned hyper-parameters" in md and "| bpr | 2 |" in md
    capsys.readouterr()


def test_a_loss_options_are_searched_only_with_that_loss():
    import optuna

    from recsys_metric.tune import LOSS_SPACE, _suggest

    triplet = _suggest(optuna.trial.FixedTrial({"loss": "triplet"}), LOSS_SPACE)
    assert triplet == {"loss": "triplet"}
    softmax = _suggest(optuna.trial.FixedTrial({"loss": "softmax", "distance": "cosine",
                                                "temperature": 0.1}), LOSS_SPACE)
    assert softmax == {"loss": "softmax", "distance": "cosine", "temperature": 0.1}
    # a fixed base loss counts when the space does not search the loss
    fixed = {k: v for k, v in LOSS_SPACE.items() if k != "loss"}
    assert _suggest(optuna.trial.FixedTrial({"negative_weight": 5.0, "distance": "euclidean"}),
                    fixed, base={"loss": "contrastive"}) == {"distance": "euclidean",
                                                              "negative_weight": 5.0}
