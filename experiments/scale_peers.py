"""The peers on the scale benchmark's logs: is CML's quality at 25 M the log's or the model's?

``bench_scale.py`` measures CML and popularity on synthetic logs of growing size
(``synthetic.py``). This runs the implicit peers on the very same logs and split
(``read_ratings``, ``leave_last_out``, ``evaluate_ranking`` with full ranking, k=10, no AUC), with
the settings ``recsys-metric compare`` gives them (implicit's defaults; ``als-recency`` the
package's preset with the time order), each fit timed, one process per size.

    python experiments/scale_peers.py --sizes 1000000,5000000,25000000 --peers als,als-recency
    python experiments/scale_peers.py --sizes 5000000 --peers als --params \
        '{"als": {"factors": 50}}' --validation --md /tmp/v.md --json /tmp/v.json

``--params`` gives a peer constructor arguments; ``--validation`` scores on each user's latest
train item, trained on the rest (the test split unread): for probes. Writes
``experiments/results/scale_peers.md`` and ``.json`` (``--md``/``--json`` elsewhere); CML's and
popularity's rows are read from ``scale.json`` (the same seed's logs) for the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def child(csv: str, peers: list[str], seed: int, params: dict, validation: bool) -> dict:
    from recsys_metric import TrainConfig, leave_last_out, read_ratings
    from recsys_metric.compare import fit_model
    from recsys_metric.evaluation import evaluate_ranking

    train, test = leave_last_out(read_ratings(csv))
    if validation:  # each user's latest train item held out of train; the test is never read
        train, test = leave_last_out(train)
    out: dict = {"n_users": train.n_users, "n_items": train.n_items, "peers": {}}
    for name in peers:
        t = time.perf_counter()
        model = fit_model(name, train, TrainConfig(), seed, params=params.get(name))
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        m = evaluate_ranking(model, train.matrix, test.matrix, k=(10,), auc=False)
        out["peers"][name] = {"fit_s": fit_s, "evaluate_s": time.perf_counter() - t,
                              **{k: float(m[k]) for k in ("HR@10", "NDCG@10")}}
        print(f"  {name:<12} fit {fit_s:7.1f} s  HR@10 {m['HR@10']:.4f}  "
              f"NDCG@10 {m['NDCG@10']:.4f}", file=sys.stderr, flush=True)
        del model
    return out


def report(runs: list[dict], argv: list[str], validation: bool) -> str:
    scale = json.loads((HERE / "results" / "scale.json").read_text())
    cml = {r["size"]: r for r in scale.get("runs", [])}
    lines = [
        "# The peers on the scale benchmark's logs",
        "",
        f"Command: `python experiments/scale_peers.py {' '.join(argv)}`, run {date.today()}.",
        "Same synthetic logs (`synthetic.py`, seed 0), split and evaluation as `scale.md` (full "
        "ranking, each user's latest interaction; with `--validation`, the latest of each "
        "user's train instead, and no rows of `scale.json`); CML and popularity from "
        "`scale.json`. "
        "Peers with `recsys-metric compare`'s settings (implicit's defaults; `als-recency`: "
        "the package's preset). Fit seconds on 2 shared cores, the peers' at the load in the "
        "last column (CML's from its quiet run in `scale.md`: not comparable).",
        "",
        "| interactions | items | model | HR@10 | NDCG@10 | fit s | load |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        c = {} if validation else cml.get(r["size"], {})  # scale.json's rows: the test split
        rows = []  # (model, HR@10, NDCG@10, fit s cell, load cell)
        if "cml" in c:
            rows.append(("CML (scale.json)", c["cml"]["HR@10"], c["cml"]["NDCG@10"],
                         f"{c['stages']['fit']['seconds']:.0f}", "-"))
        if "popularity" in c:
            rows.append(("popularity (scale.json)", c["popularity"]["HR@10"],
                         c["popularity"]["NDCG@10"], "-", "-"))
        load = f"{r['load_before']:.1f}-{r['load_after']:.1f}"
        rows += [(p, v["HR@10"], v["NDCG@10"], f"{v['fit_s']:.0f}", load)
                 for p, v in r["peers"].items()]
        for name, hr, ndcg, fit, at in rows:
            lines.append(f"| {r['size']:,} | {r['n_items']:,} | {name} | {hr:.4f} | {ndcg:.4f} "
                         f"| {fit} | {at} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,5000000,25000000")
    ap.add_argument("--peers", default="als,als-recency")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="{}",
                    help='constructor arguments by peer, e.g. \'{"als": {"factors": 50}}\'')
    ap.add_argument("--validation", action="store_true",
                    help="score on a validation split carved from train (the test unread)")
    ap.add_argument("--workdir", type=Path, help="where the CSVs are (reused) or go")
    ap.add_argument("--md", type=Path, default=HERE / "results" / "scale_peers.md")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "scale_peers.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    peers = args.peers.split(",")
    if args.child:
        print(json.dumps(child(args.child, peers, args.seed, json.loads(args.params),
                               args.validation)))
        return
    sys.path.insert(0, str(HERE))
    from synthetic import write_csv

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale-peers-"))
    runs = []
    for n in (int(s) for s in args.sizes.split(",")):
        csv = workdir / f"synthetic-{n}-seed{args.seed}.csv"
        if not csv.exists():
            write_csv(csv, n, seed=args.seed)
        print(f"{n:,} interactions ({csv})", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--child", str(csv), "--peers",
                               args.peers, "--seed", str(args.seed), "--params", args.params,
                               *(["--validation"] if args.validation else [])],
                              stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        if proc.returncode:
            sys.exit(f"the peers at {n:,} interactions failed (exit {proc.returncode})")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(size=n, load_before=load, load_after=os.getloadavg()[0])
        runs.append(r)
    args.json.write_text(json.dumps({"argv": argv, "runs": runs}, indent=1) + "\n")
    args.md.write_text(report(runs, argv, args.validation))
    print(args.md.read_text())


if __name__ == "__main__":
    main()
