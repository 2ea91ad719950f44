"""Every hyper-parameter checked before training; nothing to evaluate is an error (issue 14).

Each case here trained a NaN model, a no-op model or printed a table of zeros with exit 0, or
ended in a traceback, before.
"""

import json
import warnings

import numpy as np
import pytest

from recsys_metric import Recommender, TrainConfig
from recsys_metric.cli import main
from recsys_metric.train import ConfigWarning, fused_lanes

from .conftest import checkerboard

TRAIN = ["--dim", "8", "--epochs", "3", "--n-negatives", "5", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "ratings.csv"
    checkerboard(40, 20).to_frame().to_csv(p, index=False)
    return p


@pytest.mark.parametrize("flag, value", [
    ("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--init-norm", "inf"),
    ("--cov-weight", "nan"), ("--cov-weight", "-1"), ("--clip-norm", "nan"),
    ("--margin", "-inf"), ("--recent-share", "1.5"), ("--pull-decay", "nan"), ("--seed", "-1"),
    ("--lanes", "0"), ("--device", "gpu"),
])
def test_bad_flag_exits_2_naming_it_before_training(tmp_path, csv_path, capsys, flag, value):
    code = main(["train", str(csv_path), "--out", str(tmp_path / "m"), *TRAIN, f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("recsys-metric: error: ") and err.count("\n") == 1
    assert flag in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("values, key", [
    ({"margin": "1.5"}, "margin"), ({"seed": "abc"}, "seed"), ({"epochs": None}, "epochs"),
    ({"dim": 8.5}, "dim"), ({"rank_weight": "yes"}, "rank_weight"), ({"lr": 1e400}, "lr"),
    ({"optimizer": 3}, "optimizer"), ({"device": None}, "device"),
])
def test_config_file_values_are_type_checked_naming_file_and_key(tmp_path, csv_path, capsys,
                                                                 values, key):
    cfg = tmp_path / "tuned.json"
    cfg.write_text(json.dumps(values))
    code = main(["train", str(csv_path), "--out", str(tmp_path / "m"), *TRAIN,
                 "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2 and "tuned.json" in err and key in err and err.count("\n") == 1


def test_config_file_that_is_not_an_object(tmp_path, csv_path, capsys):
    cfg = tmp_path / "c.json"
    for text in ("[1, 2]", "null", "{\"config\": 7}", "{oops"):
        cfg.write_text(text)
        assert main(["train", str(csv_path), "--out", str(tmp_path / "m"), *TRAIN,
                     "--config", str(cfg)]) == 2
        assert "c.json" in capsys.readouterr().err


def test_valid_values_pass_and_ints_become_floats():
    cfg = TrainConfig.from_dict({"margin": 1, "lr": 0.05, "clip_norm": 0, "n_negatives": None})
    assert isinstance(cfg.margin, float) and cfg.margin == 1.0 and cfg.clip_norm == 0.0
    assert TrainConfig(device="cuda:1").validate().device == "cuda:1"  # checked when training
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Recommender(TrainConfig(device="cuda", epochs=1)).fit(checkerboard(), show_progress=False)


def test_lanes_beyond_the_catalogue_are_lowered_with_a_warning_and_still_train():
    assert fused_lanes(2, 500) == 2
    with pytest.warns(ConfigWarning, match="lanes=1"):
        assert fused_lanes(4, 12) == 1
    data = checkerboard(40, 20)
    cfg = TrainConfig(dim=8, epochs=3, n_negatives=5, batch_size=64, lanes=64, backend="cpu",
                      average_last=0, recent_pull=0.0)
    with pytest.warns(ConfigWarning, match="lanes=64"):
        model = Recommender(cfg, index="exact").fit(data, show_progress=False)
    assert model.training_loop_ == "fused-cpu"
    assert model.history_[-1]["loss"] > 0 and model.history_[-1]["active"] > 0
    start = Recommender(TrainConfig(**{**cfg.to_dict(), "epochs": 1, "lr": 1e-9}), index="exact")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        start.fit(data, show_progress=False)
    assert not np.allclose(model.item_embeddings_, start.item_embeddings_, atol=1e-3)


def test_cli_prints_the_lanes_warning_in_one_line(tmp_path, csv_path, capsys):
    assert main(["train", str(csv_path), "--out", str(tmp_path / "m"), *TRAIN,
                 "--lanes", "100"]) == 0
    err = capsys.readouterr().err
    assert "recsys-metric: warning: lanes=100" in err and "ConfigWarning" not in err


@pytest.mark.parametrize("command", ["evaluate", "compare"])
def test_nothing_to_evaluate_is_an_error(tmp_path, command, capsys):
    p = tmp_path / "singles.csv"  # every user has one interaction: leave-last-out tests nobody
    p.write_text("user,item,timestamp\n" + "".join(f"u{k},i{k % 7},{k}\n" for k in range(30)))
    extra = ["--out", str(tmp_path / "report")] if command == "compare" else []
    code = main([command, str(p), "--models", "popularity", *extra, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no user has a test item after the leave-last-out split" in err
    assert not (tmp_path / "report").exists()
