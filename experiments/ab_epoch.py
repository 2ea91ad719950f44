"""A/B of the fused CPU training epoch between versions of the code, in one process.

Each version's numba modules (``recsys_metric/sampling``: the sampler, the epoch, the strata) are
copied from a git revision, or from the working tree (``.``), into a temporary package of their
own, so that all of them are compiled side by side and timed in alternation, round after round:
the machine's load, which moves the bench's absolute rates by +-10%, hits every version alike.
Reported per version and thread count: min and median ns per pair of an epoch, and the median
relative to the first version; then whether every version trained bit-identical tables (a
change meant to leave the model alone should say True).

    .venv/bin/python experiments/ab_epoch.py HEAD~1 .            # the last commit vs the tree
    .venv/bin/python experiments/ab_epoch.py 359bdfd HEAD --threads 2 --rounds 8
    .venv/bin/python experiments/ab_epoch.py HEAD . --instances 3   # placement moves +-4%

Data: the bench's matrix (``bench_sampling.load_matrix``), U = 10, dim 64, TrainConfig's margin,
lr, rank weight and clip, two lanes, blocks of 4096, the kernel's shuffle; tables 64-byte aligned
as the Trainer's, accumulators from the version's ``adagrad_accumulator`` where it has one. The
first epoch of each version (compilation or cache load, and the largest updates) is not timed. A
version with ``prepare_pairs`` prepares the pairs once, untimed, and runs its epochs with
``run_epoch``, as the Trainer does; older versions time ``train_epoch``. Numba caches each copy
under the temporary folder, so every run compiles afresh (about a minute per version).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import ROOT, aligned, load_matrix  # noqa: E402

from recsys_metric import TrainConfig  # noqa: E402

MODULES = ("_numba_ops", "cpu", "cpu_train", "strata", "reference")


def snapshot(rev: str, dest: Path) -> None:
    """The sampling modules at ``rev`` (``.``: the working tree) as the package ``dest``."""
    dest.mkdir()
    (dest / "__init__.py").write_text("")
    for m in MODULES:
        rel = f"recsys_metric/sampling/{m}.py"
        if rev == ".":
            shutil.copy(ROOT / rel, dest / f"{m}.py")
        else:
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], check=True,
                                  capture_output=True, text=True).stdout
            (dest / f"{m}.py").write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("revs", nargs="+", help="git revisions, '.' for the working tree")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--U", type=int, default=10)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--instances", type=int, default=1,
                    help="copies of each version's tables and prepared pairs, timed in turn")
    a = ap.parse_args(argv)
    import numba

    indptr, indices, n_items, desc = load_matrix()
    n_users = len(indptr) - 1
    pu = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(indptr))
    pi = indices.astype(np.int32)
    rng = np.random.default_rng(0)

    def init(n: int) -> np.ndarray:  # CML init: N(0, 1/dim), rows clipped to the unit ball
        x = rng.standard_normal((n, a.dim)).astype(np.float32) / np.float32(a.dim**0.5)
        return x / np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True))

    ue0, ie0 = init(n_users), init(n_items)
    d = TrainConfig()
    hp = dict(n_candidates=a.U, margin=d.margin, lr=d.lr, rank_weight=d.rank_weight,
              clip_norm=d.clip_norm, seed=0, lanes=2, block_size=4096, shuffle=True)
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        versions, tables = {}, {}
        for k, rev in enumerate(a.revs):
            name = f"ab_v{k}"
            snapshot(rev, Path(tmp) / name)
            mod = importlib.import_module(f"{name}.cpu_train")
            acc = getattr(mod, "adagrad_accumulator", lambda x: aligned(np.zeros_like(x)))
            for i in range(a.instances):  # each its own memory: its own pages
                if hasattr(mod, "prepare_pairs"):  # prepared once per fit, as the Trainer does
                    pairs = mod.prepare_pairs(indptr, indices, pu, pi, n_users, n_items)
                    versions[rev, i] = lambda e, t, mod=mod, pairs=pairs: mod.run_epoch(
                        pairs, *t, epoch=e, **hp)
                else:
                    versions[rev, i] = lambda e, t, mod=mod: mod.train_epoch(
                        indptr, indices, pu, pi, *t, epoch=e, **hp)
                ue, ie = aligned(ue0), aligned(ie0)
                tables[rev, i] = [ue, ie, acc(ue), acc(ie)]  # each version's own accumulators
            print(f"compiling {rev} ...", file=sys.stderr, flush=True)
            for i in range(a.instances):
                versions[rev, i](0, tables[rev, i])
        per = {(key, t): [] for key in versions for t in a.threads}  # by version and instance
        epoch = 1
        for _ in range(a.rounds):
            for t in a.threads:
                numba.set_num_threads(t)
                for (rev, i), run in versions.items():
                    t0 = time.perf_counter()
                    run(epoch, tables[rev, i])
                    per[(rev, i), t].append(1e9 * (time.perf_counter() - t0) / len(pu))
                epoch += 1
    print(f"{desc}; U={a.U}, dim {a.dim}, {a.rounds} rounds x {a.instances} instances\n")
    print("| version | threads | min ns/pair | median ns/pair | speed vs first | instances' "
          "medians |")
    print("|---|---:|---:|---:|---:|---|")
    times = {(rev, t): sum((per[(rev, i), t] for i in range(a.instances)), [])
             for rev in a.revs for t in a.threads}
    for t in a.threads:
        first = float(np.median(times[(a.revs[0], t)]))
        for rev in a.revs:
            v = times[(rev, t)]
            inst = " ".join(f"{np.median(per[(rev, i), t]):.1f}" for i in range(a.instances))
            print(f"| {rev} | {t} | {min(v):.1f} | {np.median(v):.1f} | "
                  f"{first / np.median(v):.3f} | {inst} |")
    same = all(np.array_equal(x, y) for key in tables
               for x, y in zip(tables[a.revs[0], 0], tables[key], strict=True))
    print(f"\nbit-identical tables: {same}")


if __name__ == "__main__":
    main()
