"""Per-pair cost of the fused CPU training epoch at 1 M, 5 M and 25 M interactions, in one
process per size, between forms of the positives' test and versions of the code.

Data: for each size the synthetic log of ``experiments/synthetic.py`` (MovieLens-25M-shaped,
seed 0), split by ``leave_last_out`` and laid out as ``Trainer.fit`` lays out a default fit
(``time_order``: the items' context rows, the latest 10% of every row visited three times), so
the rows of positives, the catalogue and U (``TrainConfig.negatives_for``) are the full size's.
Tables: the Trainer's initialisation, then ``--warm`` epochs of the working tree's code on all
the pairs. Timed: ``cpu_train.run_epoch`` with the defaults (lanes 2, blocks of 4096, the
kernel's shuffle, dim 64) on a random share of the pairs (``--pairs`` of them, in the Trainer's
order): the positives, the strata and the tables are the full size's, so the cost per pair is
a full epoch's (plan included), for a fraction of its time. Every run of a round starts from
the same tables, so the rounds also check that the runs train bit-identical tables.

Runs (``--runs``), ``SOURCE:FORM``: SOURCE ``tree`` (this checkout) or a directory holding a
copy of another version's ``recsys_metric`` package (e.g. ``git archive HEAD recsys_metric |
tar -x -C /tmp/base`` gives ``/tmp/base/recsys_metric``), imported under a name of its own;
FORM the positives' test: ``auto`` (as the code chooses within ``BITSET_BUDGET_BYTES``),
``bits`` (exact bit rows whatever their size), ``lists`` (binary searches only), or, for a tree
with filters, ``filtersN`` (the sorted lists with filters of N bits per positive). Rounds
alternate the runs, so the machine's load hits all alike; per run: M pairs per second of wall
time and per second of the process's CPU time (steadier on a shared machine; with one thread
the two agree when no other process takes the core), min-max over the rounds, and the bytes
of the positives' structure the plan built.

    python experiments/bench_epoch_scale.py --sizes 1000000,5000000,25000000 \\
        --runs /tmp/base/recsys_metric:auto tree:auto --threads 1
    python experiments/bench_epoch_scale.py --sizes 25000000 --runs tree:lists tree:filters8 \\
        tree:filters32 tree:auto

Prepared logs, warm tables and the other versions' copies (with their numba caches) are kept
in ``--cache`` (25 M: ~2 minutes and 3.5 GB peak to prepare, 640 MB kept). Prints a markdown
table (``--md`` also writes it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_sampling import aligned  # noqa: E402  (a 64-byte aligned copy, as the Trainer's tables)

DIM = 64


def prepare(n: int, cache: Path) -> dict:
    """The epoch's inputs of a default fit on the synthetic log of ``n`` interactions."""
    path = cache / f"pairs-{n}.npz"
    if not path.exists():
        sys.path.insert(0, str(HERE))
        from synthetic import write_csv

        from recsys_metric import TrainConfig, leave_last_out, read_ratings, time_order

        csv = cache / f"synthetic-{n}.csv"
        write_csv(csv, n, seed=0)
        train, _ = leave_last_out(read_ratings(str(csv)))
        csv.unlink()
        cfg = TrainConfig()
        order = time_order.build(train, cfg.recent_share, cfg.transitions, cfg.pull_decay)
        rows = order.rows
        again = np.repeat(np.flatnonzero(order.latest), cfg.recent_visits - 1)
        users = np.repeat(np.arange(rows.shape[0], dtype=np.int32), np.diff(rows.indptr))
        items = rows.indices.astype(np.int32)
        np.savez(path, indptr=rows.indptr.astype(np.int64), indices=rows.indices.astype(np.int32),
                 pu=np.concatenate([users, users[again]]),
                 pi=np.concatenate([items, items[again]]), n_items=rows.shape[1],
                 U=cfg.negatives_for(rows.shape[1]))
    z = np.load(path)
    return {k: z[k] for k in z.files}


def load(source: str, into: Path):
    """``(cpu, strata, cpu_train)`` of ``source``: this checkout's, or a copy of the package
    at ``source`` in ``into`` under a name of its own (numba caches the copy's kernels there,
    valid while the copied files keep their times)."""
    if source == "tree":
        name = "recsys_metric"
    else:
        name = "bench_" + "".join(c if c.isalnum() else "_" for c in str(Path(source).resolve()))
        shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
        if str(into) not in sys.path:
            sys.path.insert(0, str(into))
    return tuple(importlib.import_module(f"{name}.sampling.{m}")
                 for m in ("cpu", "strata", "cpu_train"))


def form_setter(cpu, strata, form: str):
    """A function that puts ``form`` in place in the modules (and leaves the others' alone)."""
    if not hasattr(strata, "_bench_shipped"):  # as the version ships, before any run's form
        strata._bench_shipped = (cpu.BITSET_BUDGET_BYTES, strata._bits_pay,
                                 getattr(strata, "_FILTER_BITS", None))
    shipped = strata._bench_shipped

    def put() -> None:
        cpu.BITSET_BUDGET_BYTES, strata._bits_pay = shipped[:2]
        if shipped[2] is not None:
            strata._FILTER_BITS = shipped[2]
        if form == "bits":
            cpu.BITSET_BUDGET_BYTES = 1 << 40
        elif form == "lists":
            cpu.BITSET_BUDGET_BYTES = -1
        elif form.startswith("filters"):
            if shipped[2] is None:
                raise SystemExit(f"{form}: this version has no filters")
            cpu.BITSET_BUDGET_BYTES = 1 << 40
            strata._bits_pay = lambda rows, words, nnz, n_draws: rows == 1  # no bit rows
            strata._FILTER_BITS = (int(form[len("filters"):]),)
        elif form != "auto":
            raise SystemExit(f"unknown form {form!r}")

    return put


def bench_size(n: int, a) -> list[dict]:
    import numba

    from recsys_metric import TrainConfig

    d = prepare(n, a.cache)
    ip, ix, pu, pi = d["indptr"], d["indices"], d["pu"], d["pi"]
    n_rows, n_items, U = len(ip) - 1, int(d["n_items"]), int(d["U"])
    cfg = TrainConfig()
    hp = dict(n_candidates=U, margin=cfg.margin, lr=cfg.lr, rank_weight=cfg.rank_weight,
              clip_norm=cfg.clip_norm, seed=0, lanes=2, block_size=4096, shuffle=True)
    runs = []
    for spec in a.runs:
        source, _, form = spec.rpartition(":")
        cpu, strata, cpu_train = load(source, a.cache / "versions")
        runs.append(dict(spec=spec, cpu=cpu, strata=strata, mod=cpu_train,
                         put=form_setter(cpu, strata, form)))
    for run in runs:  # record the plan's positives, once per module
        strata = run["strata"]
        if not hasattr(strata, "_bench_spied"):
            def spy(*args, _f=strata.stratum_rows, _s=strata):
                out = _f(*args)
                _s._bench_bytes = int(out[2].nbytes + out[1].nbytes)
                return out
            strata.stratum_rows, strata._bench_spied = spy, True

    tpath = a.cache / f"tables-{n}-warm{a.warm}.npz"
    if tpath.exists():
        start = [np.load(tpath)[k] for k in ("ue", "ie", "ua", "ia")]
    else:  # the Trainer's start: N(0, init_norm / sqrt(dim)), rows clipped to clip_norm
        from recsys_metric.sampling import cpu_train

        rng = np.random.default_rng(0)
        tabs = []
        for rows in (n_rows, n_items):
            x = rng.normal(0.0, cfg.init_norm / DIM**0.5, (rows, DIM)).astype(np.float32)
            tabs.append(aligned(x / np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True)
                                               / cfg.clip_norm)))
        tabs += [cpu_train.adagrad_accumulator(t) for t in tabs]
        pairs = cpu_train.prepare_pairs(ip, ix, pu, pi, n_rows, n_items)
        for e in range(a.warm):
            cpu_train.run_epoch(pairs, *tabs, epoch=1000 + e, **hp)
        np.savez(tpath, ue=tabs[0], ie=tabs[1], ua=tabs[2], ia=tabs[3])
        start, pairs = tabs, None
    if a.pairs < len(pu):  # a random share, in the Trainer's order
        keep = np.random.default_rng(1).random(len(pu)) < a.pairs / len(pu)
        pu, pi = pu[keep], pi[keep]
    P = len(pu)
    results = []
    for threads in a.threads:
        numba.set_num_threads(threads)
        for run in runs:
            run["pairs"] = run["mod"].prepare_pairs(ip, ix, pu, pi, n_rows, n_items)
            run["wall"], run["cpu_s"] = [], []
            run["put"]()  # compile or load the version's kernels, untimed
            small = run["mod"].prepare_pairs(ip, ix, pu[:20000], pi[:20000], n_rows, n_items)
            run["mod"].run_epoch(small, *tables(run["mod"], start), epoch=0, **hp)
        same = True
        for r in range(a.rounds):
            outs = []
            for run in runs:
                tabs = tables(run["mod"], start)
                run["put"]()
                t, c = time.perf_counter(), time.process_time()
                out = run["mod"].run_epoch(run["pairs"], *tabs, epoch=1 + r, **hp)
                t, c = time.perf_counter() - t, time.process_time() - c
                run["wall"].append(P / t / 1e6)
                run["cpu_s"].append(P / c / 1e6)
                run["bytes"] = run["strata"]._bench_bytes
                outs.append((out, tabs))
                print(f"  {n:,} {threads} thread(s) round {r} {run['spec']}: {t:.1f} s",
                      file=sys.stderr, flush=True)
            same &= all(o[0] == outs[0][0] and all(np.array_equal(x, y) for x, y in
                                                   zip(o[1], outs[0][1], strict=True))
                        for o in outs)
        for run in runs:
            results.append(dict(size=n, rows=n_rows, items=n_items, U=U, pairs=P,
                                share=P / len(d["pu"]), threads=threads, run=run["spec"],
                                wall=run["wall"], cpu_s=run["cpu_s"], bytes=run["bytes"],
                                same=same, load=os.getloadavg()[0]))
        for run in runs:
            del run["pairs"]
    return results


def tables(mod, start):
    ue, ie = aligned(start[0]), aligned(start[1])
    ua, ia = mod.adagrad_accumulator(ue), mod.adagrad_accumulator(ie)
    ua[:], ia[:] = start[2], start[3]
    return ue, ie, ua, ia


def table(results: list[dict]) -> str:
    lines = ["| interactions | rows x items | U | pairs timed (share) | threads | run | "
             "positives MB | M pairs/s (wall) | M pairs / CPU s | bit-identical | load |",
             "|---:|---|---:|---:|---:|---|---:|---:|---:|---|---:|"]

    def span(xs):
        return f"{min(xs):.3f}-{max(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

    for r in results:
        lines.append(f"| {r['size']:,} | {r['rows']:,} x {r['items']:,} | {r['U']} | "
                     f"{r['pairs']:,} ({r['share']:.2f}) | {r['threads']} | {r['run']} | "
                     f"{r['bytes'] / 1e6:.1f} | {span(r['wall'])} | {span(r['cpu_s'])} | "
                     f"{r['same']} | {r['load']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,5000000,25000000")
    ap.add_argument("--runs", nargs="+", default=["tree:auto"])
    ap.add_argument("--pairs", type=int, default=2_000_000, help="pairs timed per epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1", help="comma-separated numba thread counts")
    ap.add_argument("--warm", type=int, default=1, help="epochs trained before timing")
    ap.add_argument("--cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "bench_epoch_scale")
    ap.add_argument("--md", type=Path)
    a = ap.parse_args(argv)
    a.threads = [int(t) for t in a.threads.split(",")]
    a.cache.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    results = []
    for n in (int(s) for s in a.sizes.split(",")):
        results += bench_size(n, a)
    out = table(results)
    print(out)
    if a.md:
        a.md.write_text(out + "\n")


if __name__ == "__main__":
    main()
