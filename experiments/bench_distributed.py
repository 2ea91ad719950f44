"""Data-parallel training (``recsys_metric.distributed``): 1 and 2 gloo processes side by side.

    .venv/bin/python experiments/bench_distributed.py [--datasets books ml-100k ml-latest-small]
        [--seeds 0 1 2] [--syncs 1 8 32] [--out-dir experiments/results]

Per data set (leave-last-out: each user's latest item is the test; the validation split is the
same cut of train), every run launched by ``torchrun --nproc_per_node=N`` on this machine:

- the test table: one process and two (8 merges per epoch) over ``--seeds``, and two merging
  by shard owners (first seed: the same sums as the all-reduce, so its time is what differs),
  HR@10 / NDCG@10 on the test split (full ranking), fit and epoch seconds, seconds in the merges
  and the users' exchange (waiting for the slower rank included), megabytes sent per epoch;
- the merges-per-epoch sweep, on validation only (fit on train minus its latest items): what
  ``--syncs`` would be chosen on.

Then the communication per epoch on paper (the formula of ``distributed.py``) for larger jobs.
Writes ``distributed.md`` and ``distributed.json``; last line: the JSON. ``worker`` is the
per-rank entry point (also used by ``tests/test_distributed.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from common import DATASETS  # noqa: E402

TORCHRUN = Path(sys.executable).parent / "torchrun"


def worker(args: argparse.Namespace) -> None:
    """One rank: fit with the defaults on the split, rank 0 scores it and writes the JSON."""
    from recsys_metric import TrainConfig, Trainer, leave_last_out, read_ratings
    from recsys_metric.distributed import Group
    from recsys_metric.evaluation import evaluate_ranking

    group = (Group.from_env(args.syncs, args.sync) if "WORLD_SIZE" in os.environ
             else Group())
    train, test = leave_last_out(read_ratings(args.data))
    if args.split == "valid":
        train, test = leave_last_out(train)
    config = TrainConfig.from_dict({**json.loads(args.config), "seed": args.seed})
    t = time.perf_counter()
    trainer = Trainer(config, show_progress=False, group=group)
    result = trainer.fit(train)
    fit_s = time.perf_counter() - t
    sync_s = group.total(group.sync_seconds) / group.world
    pairs = group.total(trainer.n_pairs)
    if group.rank == 0:
        m = evaluate_ranking(result, train.matrix, test.matrix, k=10)
        epochs = [h["seconds"] for h in result.history]
        out = {"world": group.world, "sync": group.mode, "syncs": group.syncs, "seed": args.seed,
               "split": args.split, "HR@10": float(m["HR@10"]), "NDCG@10": float(m["NDCG@10"]),
               "fit_s": fit_s, "epoch_s": statistics.median(epochs), "sync_s": sync_s,
               "mb_per_epoch": group.sent_bytes / len(epochs) / 1e6, "pairs": pairs,
               "items": train.n_items, "rows": int(result.user_embeddings.shape[0]),
               "dim": config.dim}
        Path(args.json).write_text(json.dumps(out))
        if args.save:
            np.savez(args.save, users=result.user_embeddings, items=result.item_embeddings)
    group.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(data: Path, nproc: int, *, seed: int = 0, syncs: int = 8, sync: str = "allreduce",
           split: str = "test", config: dict | None = None, save: Path | None = None,
           timeout: float = 1800) -> dict:
    """Run :func:`worker` under torchrun on ``nproc`` local processes; rank 0's JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [str(TORCHRUN), f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", __file__, "worker", "--data", str(data),
               "--seed", str(seed), "--syncs", str(syncs), "--sync", sync, "--split", split,
               "--config", json.dumps(config or {}), "--json", str(out)]
        if save is not None:
            cmd += ["--save", str(save)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def on_paper(rows: int, items: int, dim: int, world: int, syncs: int) -> float:
    """Bytes each rank sends per epoch: ``syncs`` merges of the item rows and their element-wise
    Adagrad accumulators, and one exchange of the users' rows and accumulators, each moving
    ``2 (N - 1) / N`` times its size (a ring all-reduce's volume; the owners' reduce and
    broadcast move the same)."""
    ring = 2 * (world - 1) / world
    return ring * 4 * 2 * dim * (syncs * items + rows)


def _cell(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-"
            f"{max(values):.{digits}f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker")
    w.add_argument("--data", required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--syncs", type=int, default=8)
    w.add_argument("--sync", default="allreduce")
    w.add_argument("--split", choices=("test", "valid"), default="test")
    w.add_argument("--config", default="{}")
    w.add_argument("--json", required=True)
    w.add_argument("--save")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--syncs", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--out-dir", type=Path)
    args = parser.parse_args()
    if args.command == "worker":
        worker(args)
        return

    results = {"command": " ".join([".venv/bin/python", *sys.argv]), "runs": []}
    for name in args.datasets:
        path = DATASETS[name]
        if not path.is_file():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        plan = [(1, "allreduce", 8, s, "test") for s in args.seeds]
        plan += [(2, "allreduce", 8, s, "test") for s in args.seeds]
        plan += [(2, "owner", 8, args.seeds[0], "test")]  # the same sums: its time only
        plan += [(1, "allreduce", 8, 0, "valid")]
        plan += [(2, "allreduce", k, 0, "valid") for k in args.syncs]
        for nproc, sync, syncs, seed, split in plan:
            r = launch(path, nproc, seed=seed, syncs=syncs, sync=sync, split=split)
            r["dataset"] = name
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
    text = report(results)
    print(text)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        md = args.out_dir / "distributed.md"
        marker = "<!-- notes: kept when the table is rewritten -->"
        if md.is_file() and marker in md.read_text():  # hand-written notes survive a rerun
            text = text.split(marker)[0] + marker + md.read_text().split(marker, 1)[1]
        md.write_text(text)
        (args.out_dir / "distributed.json").write_text(json.dumps(results, indent=1))
    summary = {}
    for r in results["runs"]:
        if r["split"] == "test":
            key = f"{r['dataset']}/{r['world']}/{r['sync']}"
            summary.setdefault(key, []).append(round(r["NDCG@10"], 4))
    print(json.dumps(summary))


def report(results: dict) -> str:
    runs = results["runs"]
    lines = ["# Data-parallel training: 1 and 2 processes on this machine", "",
             f"Command: `{results['command']}`, run {time.strftime('%Y-%m-%d')}.", "",
             "Each run: `torchrun --nproc_per_node=N` on this 2-core machine (gloo, each rank "
             "one core: the CPU loop's threads are the cores divided among the local ranks), "
             "the default config, leave-last-out (the test: each user's latest item; full "
             "ranking). Merge s: time in the item merges and the users' exchange, waiting for "
             "the slower rank included (mean over ranks). MB / epoch: what each rank sends "
             "(the algorithms' volume, `2 (N - 1) / N` times the tensors).", "",
             "## Test split, over seeds (mean (min-max))", "",
             "| data set | processes | merge | seeds | HR@10 | NDCG@10 | fit s | median epoch s "
             "| merge s | MB / epoch |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict = {}
    for r in runs:
        if r["split"] == "test":
            groups.setdefault((r["dataset"], r["world"], r["sync"]), []).append(r)
    for (name, world, sync), rs in groups.items():
        lines.append(
            f"| {name} | {world} | {sync if world > 1 else '-'} | {len(rs)} | "
            f"{_cell([r['HR@10'] for r in rs])} | {_cell([r['NDCG@10'] for r in rs])} | "
            f"{_cell([r['fit_s'] for r in rs], 1)} | {_cell([r['epoch_s'] for r in rs], 2)} | "
            f"{_cell([r['sync_s'] for r in rs], 1)} | "
            f"{_cell([r['mb_per_epoch'] for r in rs], 1)} |")
    lines += ["", "## Merges per epoch, on validation (seed 0)", "",
              "| data set | processes | merges / epoch | HR@10 | NDCG@10 | median epoch s | "
              "MB / epoch |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if r["split"] == "valid":
            syncs = r["syncs"] if r["world"] > 1 else "-"
            lines.append(f"| {r['dataset']} | {r['world']} | {syncs}"
                         f" | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['epoch_s']:.2f} | "
                         f"{r['mb_per_epoch']:.1f} |")
    lines += ["", "## Communication per epoch, on paper", "",
              "Each rank sends per epoch `2 (N - 1) / N x 4 B x 2 dim x (syncs x items + rows)`"
              " (the item rows and their Adagrad accumulators at each merge, the users' rows "
              "and theirs once), dim 64, 8 merges per epoch; rows = users + items (the context "
              "rows).", "", "| job | users | items | processes | GB / epoch / rank |",
              "|---|---:|---:|---:|---:|"]
    for job, users, items in (("ML-1M size", 6_040, 3_706), ("25 M interactions", 162_541,
                                                              59_047),
                              ("1 B interactions", 100_000_000, 10_000_000)):
        for world in (2, 8, 64):
            gb = on_paper(users + items, items, 64, world, 8) / 1e9
            lines.append(f"| {job} | {users:,} | {items:,} | {world} | {gb:,.3f} |")
    lines += ["", "<!-- notes: kept when the table is rewritten -->", ""]  # marker of main()
    return "\n".join(lines)


if __name__ == "__main__":
    main()
