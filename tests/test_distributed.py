"""Data-parallel training (:mod:`recsys_metric.distributed`) with real gloo processes: one rank
is the single-process fit bit for bit, two ranks train as well as one (within the seed spread),
both merge modes give the same tables, a killed rank fails the job with a clear message and the
same command resumes from the last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from recsys_metric.distributed import Group
from recsys_metric.sampling import cpu_many, cpu_train

from .conftest import ROOT, SHARED

sys.path.insert(0, str(ROOT / "experiments"))  # experiments/ is not a package
from bench_distributed import TORCHRUN, free_port, launch  # noqa: E402

BOOKS = ROOT / "data" / "books" / "ratings.csv"
CLI = [sys.executable, "-m", "recsys_metric.cli", "train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def tables(path):
    with np.load(path / "model.npz") as z:
        return {k: z[k] for k in ("user_embeddings", "item_embeddings", "user_adagrad",
                                  "item_adagrad")}


def torchrun(nproc, *args, timeout=600):
    cmd = [str(TORCHRUN), f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "--no-python", sys.executable, "-m",
           "recsys_metric.cli", "train", *map(str, args), "--distributed"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


# -- in process -----------------------------------------------------------------------------------


def _toy(seed=0, n_users=60, n_items=40):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.2
    indptr = np.concatenate([[0], np.cumsum(dense.sum(1))]).astype(np.int64)
    indices = np.nonzero(dense)[1].astype(np.int32)
    users = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(indptr))
    tabs = [rng.normal(0, 0.1, (n, 16)).astype(np.float32) for n in (n_users, n_items)]
    return indptr, indices, users, indices.copy(), tabs


@pytest.mark.parametrize("loss", ["triplet", "contrastive"])
@pytest.mark.parametrize("lanes", [1, 2])
def test_an_epoch_in_ranges_is_the_epoch(loss, lanes):
    """The ranges a merge cuts an epoch into change nothing, and the merge runs once per range."""
    indptr, indices, users, items, (ue, ie) = _toy()
    out = []
    for syncs in (1, 5):
        u, i = ue.copy(), ie.copy()
        ua, ia = cpu_train.adagrad_accumulator(u), cpu_train.adagrad_accumulator(i)
        pairs = cpu_train.prepare_pairs(indptr, indices, users, items, len(u), len(i))
        calls = []
        common = dict(lr=0.1, clip_norm=1.0, seed=3, epoch=1, lanes=lanes, block_size=16,
                      shuffle=True, syncs=syncs, sync=lambda calls=calls: calls.append(1))
        if loss == "triplet":
            cpu_train.run_epoch(pairs, u, i, ua, ia, n_candidates=5, margin=0.5,
                                rank_weight=True, **common)
        else:
            cpu_many.run_epoch(pairs, u, i, ua, ia, loss="contrastive", n_negatives=5,
                               margin=0.5, **common)
        assert len(calls) == syncs
        out.append((u, i, ua, ia))
    for a, b in zip(*out, strict=True):
        assert np.array_equal(a, b)


def test_row_ranges_cover_the_rows_in_about_equal_pairs():
    counts = np.random.default_rng(0).integers(0, 50, 1000)
    for world in (1, 2, 3, 8):
        ranges = [Group(rank=r, world=world).row_range(counts) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(counts)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        share = [counts[lo:hi].sum() / counts.sum() for lo, hi in ranges]
        assert max(share) - min(share) < 0.02


def test_distributed_outside_torchrun_is_a_clear_error(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    done = subprocess.run([*CLI, str(BOOKS), "--out", str(tmp_path / "m"), "--distributed"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    assert "torchrun" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()


# -- with gloo processes --------------------------------------------------------------------------


def test_one_rank_is_the_single_process_fit(tmp_path):
    flags = ["--epochs", "8", "--quiet"]
    plain = subprocess.run([*CLI, str(BOOKS), "--out", str(tmp_path / "plain"), *flags],
                           capture_output=True, text=True, timeout=600, env=ENV)
    assert plain.returncode == 0, plain.stderr
    one = torchrun(1, BOOKS, "--out", tmp_path / "one", *flags)
    assert one.returncode == 0, one.stderr
    a, b = tables(tmp_path / "plain"), tables(tmp_path / "one")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_two_ranks_merge_modes_agree_and_rank_0_saves(tmp_path):
    flags = ["--epochs", "8", "--quiet"]
    runs = {}
    for mode in ("allreduce", "owner"):
        done = torchrun(2, BOOKS, "--out", tmp_path / mode, "--sync", mode, *flags)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("saved to") == 1  # rank 0 alone reports and saves
        runs[mode] = tables(tmp_path / mode)
    for k in runs["allreduce"]:  # the same sums, in the same order, by other messages
        assert np.array_equal(runs["allreduce"][k], runs["owner"][k]), k
    assert (np.linalg.norm(runs["owner"]["item_embeddings"], axis=1) <= 1 + 1e-5).all()


@pytest.mark.parametrize("name", ["books", "ml-100k", "ml-latest-small"])
def test_two_ranks_train_within_the_seed_spread_of_one(name):
    path = {"books": BOOKS, "ml-100k": SHARED / "ml-100k/u.data",
            "ml-latest-small": SHARED / "ml-latest-small/ratings.csv"}[name]
    if not path.is_file():
        pytest.skip(f"{path} not found")
    one = [launch(path, 1, seed=s) for s in (0, 1, 2)]
    two = launch(path, 2, seed=0)
    for metric in ("HR@10", "NDCG@10"):
        seeds = [r[metric] for r in one]
        spread = max(seeds) - min(seeds)
        assert min(seeds) - spread <= two[metric] <= max(seeds) + spread, (metric, seeds, two)


def _rank(rank, port, out, ckpt, flags):
    env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return subprocess.Popen([*CLI, str(BOOKS), "--out", str(out), "--checkpoint-dir", str(ckpt),
                             "--distributed", *flags], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_killed_rank_fails_the_job_and_the_same_command_resumes(tmp_path):
    flags = ["--epochs", "12", "--quiet"]
    whole = torchrun(2, BOOKS, "--out", tmp_path / "whole", *flags)
    assert whole.returncode == 0, whole.stderr
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    port = free_port()
    ranks = [_rank(r, port, out, ckpt, flags) for r in (0, 1)]
    epoch, deadline = 0, time.monotonic() + 300
    while epoch < 3 and ranks[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        try:  # renamed into place whole: any checkpoint seen is complete
            epoch = torch.load(ckpt / "fit.pt", weights_only=True)["epoch"]
        except FileNotFoundError:
            pass
    ranks[1].send_signal(signal.SIGKILL)
    ranks[1].wait()
    _, err = ranks[0].communicate(timeout=120)
    assert 3 <= epoch < 12, "the job was not caught mid-way"
    assert ranks[0].returncode != 0
    assert "another rank has stopped" in err and "--checkpoint-dir" in err, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written
    port = free_port()
    ranks = [_rank(r, port, out, ckpt, flags[:-1]) for r in (0, 1)]  # not quiet: says it resumes
    errs = [p.communicate(timeout=600)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], errs
    assert "resuming from" in errs[0]
    a, b = tables(tmp_path / "whole"), tables(out)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_bench_worker_json_names_the_job():
    r = launch(BOOKS, 2, config={"epochs": 2})
    assert r["world"] == 2 and r["sync"] == "allreduce" and r["mb_per_epoch"] > 0
    json.dumps(r)
