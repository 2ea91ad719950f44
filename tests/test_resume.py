"""Warm starts and checkpoints, end to end through the CLI in subprocesses: a run killed with
SIGKILL and run again ends with the tables of an uninterrupted run, bit for bit."""

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_metric import Recommender

from .conftest import ROOT

BOOKS = ROOT / "data" / "books" / "ratings.csv"
TRAIN = [sys.executable, "-m", "recsys_metric.cli", "train"]


def tables(path):
    with np.load(path / "model.npz") as z:
        return z["user_embeddings"], z["item_embeddings"]


def run(*args):
    return subprocess.run([*TRAIN, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_killed_run_resumes_to_identical_tables(tmp_path):
    flags = ["--epochs", "30", "--quiet"]
    assert run(BOOKS, "--out", tmp_path / "whole", *flags).returncode == 0
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed"
    cmd = [*TRAIN, str(BOOKS), "--out", str(out), "--checkpoint-dir", str(ckpt), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epoch, deadline = 0, time.monotonic() + 300
    while epoch < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        try:  # renamed into place whole: any checkpoint seen is complete
            epoch = torch.load(ckpt / "fit.pt", weights_only=True)["epoch"]
        except FileNotFoundError:
            pass
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    assert 3 <= epoch < 30, "the run was not caught mid-way"
    assert not out.exists()  # nothing half-written
    again = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    for a, b in zip(tables(tmp_path / "whole"), tables(out), strict=True):
        assert np.array_equal(a, b)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert run(BOOKS, "--out", tmp_path / "a", "--epochs", "2", "--quiet",
               "--checkpoint-dir", ckpt).returncode == 0
    other = run(BOOKS, "--out", tmp_path / "b", "--epochs", "3", "--quiet",
                "--checkpoint-dir", ckpt)
    assert other.returncode == 2 and "another config or other data" in other.stderr
    assert "Traceback" not in other.stderr and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """The bundled log split in time: the first 80% of rows, and all of them."""
    d = tmp_path_factory.mktemp("halves")
    df = pd.read_csv(BOOKS)
    df = df.sort_values(df.columns[-1], kind="stable")
    first = d / "first.csv"
    df.iloc[:int(0.8 * len(df))].to_csv(first, index=False)
    model = d / "first_model"
    res = run(first, "--out", model, "--epochs", "10", "--quiet")
    assert res.returncode == 0, res.stderr
    return df, model


def test_warm_start_adds_new_ids_and_continues(halves, tmp_path):
    df, first = halves
    res = run(BOOKS, "--warm-start", first, "--out", tmp_path / "next", "--epochs", "3",
              "--quiet")
    assert res.returncode == 0, res.stderr
    old, new = Recommender.load(first), Recommender.load(tmp_path / "next")
    assert list(new.users_.ids[:len(old.users_)]) == list(old.users_.ids)  # old ids first
    assert set(new.users_.ids) == set(df.iloc[:, 0].astype(str))
    assert new.config.epochs == 3 and new.config.dim == old.config.dim
    late = next(u for u in new.users_.ids if u not in set(old.users_.ids))
    ids, _ = new.recommend(late, N=5)  # a user only the new log has
    assert len(ids) == 5
    # the known ids start at the model's points: with a vanishing step they stay there
    still = run(BOOKS, "--warm-start", first, "--out", tmp_path / "still", "--epochs", "1",
                "--lr", "1e-9", "--average-last", "0", "--recent-pull", "0", "--quiet")
    assert still.returncode == 0, still.stderr
    kept = Recommender.load(tmp_path / "still")
    n_users, n_items = len(old.users_), len(old.items_)
    assert np.allclose(kept.user_embeddings_[:n_users], old.user_embeddings_, atol=1e-6)
    assert np.allclose(kept.item_embeddings_[:n_items], old.item_embeddings_, atol=1e-6)
    assert np.abs(new.item_embeddings_[:n_items] - old.item_embeddings_).max() > 1e-3


def test_warm_start_of_another_space_is_a_clear_error(halves, tmp_path):
    _, first = halves
    res = run(BOOKS, "--warm-start", first, "--dim", "8", "--out", tmp_path / "x", "--quiet")
    assert res.returncode == 2 and "warm start: the model has dim 64" in res.stderr
    assert not (tmp_path / "x").exists()


def test_warm_start_continues_with_the_saved_accumulators(tmp_path):
    """The model keeps its rows' Adagrad accumulators (saved, loaded); a warm start steps with
    them: huge accumulators leave the known rows where they were, zero ones (a cold
    optimiser) move them."""
    from recsys_metric import TrainConfig, read_ratings

    data = read_ratings(BOOKS)
    cfg = TrainConfig(epochs=2, average_last=0, recent_pull=0.0)
    model = Recommender(cfg).fit(data, show_progress=False)
    acc = model.accumulators_
    assert acc[0].shape == model.user_embeddings_.shape and (acc[1] > 0).any()
    again = Recommender.load(model.save(tmp_path / "m"))
    assert all(np.array_equal(a, b) for a, b in zip(acc, again.accumulators_, strict=True))
    moved = {}
    for name, scale in (("huge", 1e12), ("zero", 0.0)):
        again.accumulators_ = tuple(np.full_like(a, 1.0) * scale for a in acc)
        warm = Recommender(TrainConfig(epochs=1, average_last=0, recent_pull=0.0)).fit(
            data, warm_start=again, show_progress=False)
        moved[name] = np.abs(warm.item_embeddings_ - again.item_embeddings_).max()
    assert moved["huge"] < 1e-3 and moved["zero"] > 100 * moved["huge"], moved
