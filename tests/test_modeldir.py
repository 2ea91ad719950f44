"""Saving never loses a user's files; a damaged model directory is an error, never a crash.

Regression tests of issue 14: each case here destroyed files, crashed or answered wrongly before.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recsys_metric import Recommender, TrainConfig, modeldir

from .conftest import ROOT, checkerboard

FAST = dict(dim=8, epochs=3, n_negatives=5, batch_size=64, lr=0.1, margin=0.5)


@pytest.fixture(scope="module")
def models():
    """Two different small models with Annoy indexes, and one exact."""
    data = checkerboard(40, 20)
    a = Recommender(TrainConfig(**FAST, seed=1), index="annoy").fit(data, show_progress=False)
    b = Recommender(TrainConfig(**FAST, seed=2), index="annoy").fit(data, show_progress=False)
    c = Recommender(TrainConfig(**FAST, seed=3), index="exact").fit(data, show_progress=False)
    return a, b, c


def same(m1: Recommender, m2: Recommender) -> bool:
    return np.array_equal(m1.item_embeddings_, m2.item_embeddings_)


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def reseal(path: Path) -> None:
    """Rewrite the manifest's sizes and hashes to match the files: tampering that the hashes
    cannot see, so the structural checks must."""
    mpath = path / modeldir.MANIFEST
    meta = json.loads(mpath.read_text())
    for name in meta["files"]:
        f = path / name
        meta["files"][name] = {"bytes": f.stat().st_size, "sha256": modeldir.sha256(f)}
    mpath.write_text(json.dumps(meta))


# --------------------------------------------------------------------------- what save refuses


@pytest.mark.parametrize("make", ["file", "project", "model_plus_notes"])
def test_save_refuses_what_it_did_not_create_and_touches_nothing(tmp_path, models, make):
    target = tmp_path / "out"
    if make == "file":
        target.write_text("precious")
    elif make == "project":
        (target / "data").mkdir(parents=True)
        (target / "notes.txt").write_text("x")
    else:
        models[0].save(target)
        (target / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="refusing to replace it"):
        models[1].save(target)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    if make == "file":
        assert target.read_text() == "precious"


def test_save_refuses_the_working_directory_and_its_parents(tmp_path, models, monkeypatch):
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    for out in (".", str(inner), "../b/../../a", ".."):
        with pytest.raises(ValueError, match="working directory"):
            models[0].save(out)
    with pytest.raises(ValueError, match="empty"):
        models[0].save("")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


def test_save_replaces_a_model_an_empty_dir_or_a_legacy_model(tmp_path, models):
    a, b, _ = models
    target = tmp_path / "m"
    target.mkdir()  # empty: fine
    a.save(target)
    assert same(Recommender.load(target), a)
    b.save(target)  # a model: replaced whole
    assert same(Recommender.load(target), b)
    assert sorted(os.listdir(tmp_path)) == ["m"]
    legacy = tmp_path / "old"  # saved by 0.1.0: no manifest
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"format": 1}))
    (legacy / "model.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="without a manifest"):
        Recommender.load(legacy)
    a.save(legacy)
    assert same(Recommender.load(legacy), a)


def test_new_path_parents_are_created_and_permissions_follow_the_umask(tmp_path, models):
    old = os.umask(0o022)
    try:
        path = models[2].save(tmp_path / "x" / "y" / "m")
        assert (path.stat().st_mode & 0o777) == 0o755
        assert ((path / "model.npz").stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        path = models[2].save(tmp_path / "private")
        assert (path.stat().st_mode & 0o777) == 0o700
    finally:
        os.umask(old)


def test_cli_refuses_out_before_reading_or_training(tmp_path, capsys):
    from recsys_metric.cli import main

    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "notes.txt").write_text("x")
    # the ratings file does not even exist: the --out check comes first
    code = main(["train", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "proj"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "proj" in err and "refusing" in err and "missing.csv" not in err
    assert (tmp_path / "proj" / "notes.txt").read_text() == "x"
    assert main(["train", str(ROOT / "data/books/ratings.csv"), "--out", "", "--quiet"]) == 2
    assert "empty" in capsys.readouterr().err


# --------------------------------------------------------------------------- failures roll back


def test_a_failed_write_leaves_the_old_model_and_no_debris(tmp_path, models):
    a, b, _ = models
    target = tmp_path / "m"
    a.save(target)

    def broken(tmp: Path) -> None:
        b._write(tmp)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        modeldir.write_dir(target, broken)
    assert same(Recommender.load(target), a) and hidden(tmp_path) == []


def test_fallback_swap_rolls_back_when_the_second_rename_fails(tmp_path, models, monkeypatch):
    a, b, _ = models
    target = tmp_path / "m"
    a.save(target)
    monkeypatch.setattr(modeldir, "_renameat2", lambda *args: False)  # no RENAME_EXCHANGE
    real = os.rename

    def rename(src, dst):
        if Path(dst) == target and not str(src).endswith(".old"):  # the new model moving in
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        b.save(target)
    monkeypatch.setattr(os, "rename", real)
    assert same(Recommender.load(target), a) and hidden(tmp_path) == []
    b.save(target)  # the fallback works when nothing fails
    assert same(Recommender.load(target), b) and hidden(tmp_path) == []


def test_concurrent_saves_one_wins_the_other_errs_no_debris(tmp_path, models):
    a, b, c = models
    target = tmp_path / "m"
    a.save(target)
    written, release = threading.Event(), threading.Event()
    outcome = []

    def slow(tmp: Path) -> None:
        b._write(tmp)
        written.set()
        release.wait(30)

    def first() -> None:
        try:
            modeldir.write_dir(target, slow)
            outcome.append("saved")
        except ValueError as e:
            outcome.append(e)

    t = threading.Thread(target=first)
    t.start()
    assert written.wait(30)
    c.save(target)  # starts later, finishes first: it wins
    release.set()
    t.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError)
    assert "another save" in str(outcome[0])
    assert same(Recommender.load(target), c) and hidden(tmp_path) == []


def test_debris_of_a_killed_save_is_removed_by_the_next(tmp_path, models):
    a, _, _ = models
    target = tmp_path / "m"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.saving-{dead.pid}-0123abcd"
    live = tmp_path / f".m.saving-{os.getpid()}-0123abcd"  # a save in progress: not touched
    for d in (stale, live):
        d.mkdir()
        (d / "model.npz").write_bytes(b"partial")
    a.save(target)
    assert not stale.exists() and live.exists()


KILLER = textwrap.dedent("""
    import sys
    from recsys_metric import Recommender
    a, b = Recommender.load(sys.argv[1]), Recommender.load(sys.argv[2])
    print("ready", flush=True)
    while True:
        a.save(sys.argv[3])
        b.save(sys.argv[3])
""")


def test_kill_9_during_saves_never_leaves_the_path_empty_or_half_written(tmp_path, models):
    a, b, _ = models
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    target = tmp_path / "m"
    a.save(target)
    t0 = time.perf_counter()
    a.save(target)
    one_save = time.perf_counter() - t0
    rng = random.Random(0)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", KILLER, str(tmp_path / "a"),
                                  str(tmp_path / "b"), str(target)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 8 * one_save))  # a random point of some save
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        got = Recommender.load(target)  # whole: the manifest and every hash check
        assert same(got, a) or same(got, b)
    a.save(target)  # cleans what the killed saves left
    assert hidden(tmp_path) == []


# --------------------------------------------------------------------------- damaged models


def damage(path: Path, case: str, other: Path) -> None:
    """Each way a model directory was found to crash or mislead before issue 14."""
    ann, npz, cfg = path / "items.ann", path / "model.npz", path / "config.json"
    rng = np.random.default_rng(0)
    if case == "random_ann":
        ann.write_bytes(rng.bytes(ann.stat().st_size))
    elif case == "other_dim_ann":
        ann.write_bytes((other / "items.ann").read_bytes())
    elif case == "half_ann":
        ann.write_bytes(ann.read_bytes()[: ann.stat().st_size // 2])
    elif case == "truncated_npz":
        npz.write_bytes(npz.read_bytes()[:100])
    elif case == "empty_npz":
        npz.write_bytes(b"")
    elif case == "config_list":
        cfg.write_text("[1, 2]")
    elif case == "config_no_index":
        meta = json.loads(cfg.read_text())
        del meta["index"]
        cfg.write_text(json.dumps(meta))
    elif case == "wrong_shape":
        with np.load(npz) as z:
            t = dict(z)
        t["user_embeddings"] = t["user_embeddings"][:-1]
        np.savez(npz, **t)
    elif case == "liked_out_of_range":
        with np.load(npz) as z:
            t = dict(z)
        t["liked_indices"] = t["liked_indices"] + 1000
        np.savez(npz, **t)
    elif case == "no_manifest":
        (path / modeldir.MANIFEST).unlink()
    elif case == "manifest_garbage":
        (path / modeldir.MANIFEST).write_bytes(b"\x00\xff{")


CASES = ["random_ann", "other_dim_ann", "half_ann", "truncated_npz", "empty_npz", "config_list",
         "config_no_index", "wrong_shape", "liked_out_of_range", "no_manifest",
         "manifest_garbage"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, models):
    base = tmp_path_factory.mktemp("saved")
    models[0].save(base / "a")
    data = checkerboard(40, 20)
    Recommender(TrainConfig(**{**FAST, "dim": 16}), index="annoy").fit(
        data, show_progress=False).save(base / "dim16")
    return base


@pytest.mark.parametrize("resealed", [False, True], ids=["as-damaged", "manifest-resealed"])
@pytest.mark.parametrize("case", CASES)
def test_damaged_model_is_a_clear_error(tmp_path, saved, case, resealed):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(saved / "a", path)
    damage(path, case, saved / "dim16")
    if resealed and (path / modeldir.MANIFEST).is_file() and case != "manifest_garbage":
        reseal(path)  # the hashes now agree: the structural checks must catch it
    with pytest.raises(ValueError, match=str(path)):
        Recommender.load(path)


def test_the_cli_reports_a_damaged_model_in_one_line(tmp_path, saved, capsys):
    import shutil

    from recsys_metric.cli import main

    path = tmp_path / "m"
    shutil.copytree(saved / "a", path)
    damage(path, "random_ann", saved / "dim16")
    assert main(["recommend", str(path), "--user", "u1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "items.ann" in err and "SHA-256" in err


def test_a_model_trained_on_a_gpu_loads_and_serves_on_cpu(tmp_path, saved):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(saved / "a", path)
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["device"], meta["config"]["backend"] = "cuda", "triton"
    (path / "config.json").write_text(json.dumps(meta))
    reseal(path)
    model = Recommender.load(path)
    assert model.config.device == "cuda"
    ids, _ = model.recommend("u1", N=3)
    assert len(ids) == 3


def test_verify_false_skips_hashes_but_not_structure(tmp_path, saved):
    import shutil

    path = tmp_path / "m"
    shutil.copytree(saved / "a", path)
    damage(path, "random_ann", saved / "dim16")
    with pytest.raises(ValueError, match="items.ann"):
        Recommender.load(path, verify=False)


# --------------------------------------------------------------------------- fuzz


def _fuzz_strategies():
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                     max_size=3),
        max_leaves=6)
    files = st.sampled_from(sorted(modeldir.MODEL_FILES))
    keys = st.sampled_from(["config", "index", "format", "dim", "shapes", "files", "history"])
    sub = st.sampled_from(["kind", "n_trees", "search_k", "requested", "margin", "dim", "lanes",
                           "device", "calibrated_k", "user_embeddings"])
    mutation = st.one_of(
        st.tuples(st.just("truncate"), files, st.floats(0, 1)),
        st.tuples(st.just("flip"), files, st.floats(0, 1), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("append"), files, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("replace"), files, st.binary(max_size=256)),
        st.tuples(st.just("delete"), files),
        st.tuples(st.just("json"), st.sampled_from(["config.json", "manifest.json",
                                                    "item_names.json"]), keys, sub,
                  json_values),
    )
    return st.lists(mutation, min_size=1, max_size=3), st.booleans()


def _mutate(path: Path, m: tuple) -> None:
    f = path / m[1]
    if m[0] == "json":
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict):
            inner = doc.get(m[2])
            if isinstance(inner, dict):
                inner[m[3]] = m[4]
            else:
                doc[m[2]] = m[4]
        f.write_text(json.dumps(doc))
        return
    if not f.is_file():
        return
    data = f.read_bytes()
    at = int(m[2] * len(data)) if m[0] in ("truncate", "flip") else 0
    if m[0] == "truncate":
        f.write_bytes(data[:at])
    elif m[0] == "flip":
        f.write_bytes(data[:at] + m[3] + data[at + len(m[3]):])
    elif m[0] == "append":
        f.write_bytes(data + m[2])
    elif m[0] == "replace":
        f.write_bytes(m[2])
    else:
        f.unlink()


def test_fuzz_damaged_model_directories_load_or_raise_value_error(saved, tmp_path_factory):
    """Whatever happens to a model directory, loading it gives a working model or a
    ValueError: never another exception, a crash or an item the model does not have."""
    import shutil

    from hypothesis import HealthCheck, given, settings

    mutations, resealed = _fuzz_strategies()
    root = tmp_path_factory.mktemp("fuzz")
    counter = iter(range(10**9))

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutations, resealed)
    def check(muts, reseal_it):
        path = root / f"m{next(counter)}"
        shutil.copytree(saved / "a", path)
        for m in muts:
            _mutate(path, m)
        if reseal_it:
            try:
                reseal(path)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass  # a manifest too broken to reseal stays as it is
        try:
            model = Recommender.load(path)
        except ValueError:
            return
        ids, scores = model.recommend("u1", N=5)
        assert set(ids) <= set(model.items_.ids) and np.all(np.diff(scores) <= 1e-6)
        shutil.rmtree(path)

    check()
