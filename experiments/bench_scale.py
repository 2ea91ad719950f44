"""Scale benchmark: CML from a ratings CSV to a full evaluation at 1 M, 5 M and 25 M interactions.

For each size a synthetic log (``experiments/synthetic.py``: MovieLens-25M-shaped, power-law
users and items, planted tastes, timestamps; 25 M rows = 162,541 users x 59,047 items) is
written to a CSV (timed apart, not a stage), then a fresh Python process per size runs the
stages a user runs and measures each one's seconds and peak resident memory:

1. ``read_ratings(csv)``;
2. ``leave_last_out`` (the full log is dropped after it);
3. ``Recommender(config).fit(train, show_progress=False)`` with the defaults (``--config``
   overrides fields), its epochs' seconds from ``model.history_``;
4. ``evaluate_ranking(model, train.matrix, test.matrix, k=(10,), auc=False)``: every test user
   ranked against the whole catalogue (AUC left out: an extra pass over every score);
5. the same for the popularity baseline (``--no-popularity`` skips it): the quality the planted
   tastes make measurable.

Peak memory is the process's ``VmHWM``, reset to the current RSS before each stage
(``/proc/self/clear_refs``), so each stage has its own peak; the pipeline's is the largest of
read, split, fit and evaluate (``ru_maxrss`` is kept beside as a check). Epoch seconds per
million = the median epoch's seconds / (interactions in the CSV / 1e6) (the mean and the
fastest are kept: on a shared machine an epoch slows when another process takes a core); per
million pairs divides by the pairs an epoch visits instead (every train pair, the items'
context rows, and the latest 10% of each row twice more: about 2.2x the interactions with the
defaults). The child also records, per epoch, the sampler's form of the positives: an exact
bit row per user and stratum within its 128 MiB budget, else sorted lists with a filter per row
within the same budget (``strata.stratum_rows``; ``--bitset-budget`` changes it, a what-if),
as past the bit rows a pair costs about 2x (``results/epoch_scale.md``).

    python experiments/bench_scale.py --sizes 1000000,5000000,25000000
    python experiments/bench_scale.py --sizes 100000,300000 --md /tmp/s.md --json /tmp/s.json
    python experiments/bench_scale.py --from-json experiments/results/scale.json  # redo the md

Writes ``experiments/results/scale.md`` (table, targets met or missed, memory model, an
extrapolation to 25 M when it was not run; text below its notes marker is kept) and
``scale.json`` (every measurement); the last line printed is
``{"sizes": [...], "fit_s": [...], "epoch_s_per_million": [...], "peak_rss_gb": [...]}``.
Takes about 8 minutes for 1 M and 5 M on 2 cores; 25 M writes a 594 MiB CSV to the temporary
directory and took 75 minutes (the fit 58.5, the two evaluations 14; ``scale.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GB = 1e9
TARGETS = {"linear": 1.3, "fit_s_25m": 900.0, "peak_gb_25m": 6.0}
BUDGET = 128 << 20  # recsys_metric.sampling.cpu.BITSET_BUDGET_BYTES (the parent imports none)


# -- the child: one size, one fresh process -------------------------------------------------------

def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS (Linux >= 4.0)
    except OSError:
        pass


def child(csv: str, overrides: dict, popularity: bool, bitset_budget: int | None) -> dict:
    import gc
    import resource

    from recsys_metric import Recommender, TrainConfig, leave_last_out, read_ratings
    from recsys_metric.baselines import Popularity
    from recsys_metric.evaluation import evaluate_ranking
    from recsys_metric.warmup import warm

    warm()  # the fused kernels loaded (compiled once per machine) before the baseline
    from recsys_metric.sampling import cpu, strata

    if bitset_budget is not None:  # a what-if: the positives' bit-set budget of the sampler
        cpu.BITSET_BUDGET_BYTES = bitset_budget
    # per epoch: bytes of the positives' exact bit rows, 0 where sorted lists were used; and
    # of the lists' filters (one word per row: ``bits.shape[1] == 1``), 0 where none
    bitsets, filters = [], []
    stratum_rows = strata.stratum_rows

    def spy(*args):  # the sampler's choice, recorded (plan_epoch calls it once per epoch)
        sptr, spos, bits = stratum_rows(*args)
        exact = bits.shape[0] > 0 and bits.shape[1] > 1
        bitsets.append(int(bits.nbytes) if exact else 0)
        filters.append(0 if exact else int(bits.nbytes))
        return sptr, spos, bits

    strata.stratum_rows = spy
    gc.collect()
    out: dict = {"baseline_rss": _status("VmRSS"), "stages": {}}

    def stage(name: str, fn):
        gc.collect()
        _reset_peak()
        before, t = _status("VmRSS"), time.perf_counter()
        value = fn()
        secs = time.perf_counter() - t
        out["stages"][name] = {"seconds": secs, "rss_before": before, "peak": _status("VmHWM")}
        print(f"  {name:<10} {secs:8.1f} s  peak {_status('VmHWM') / GB:5.2f} GB",
              file=sys.stderr, flush=True)
        return value

    def after(name: str) -> None:
        gc.collect()
        out["stages"][name]["rss_after"] = _status("VmRSS")

    data = stage("read", lambda: read_ratings(csv))
    after("read")
    out.update(n_users=data.n_users, n_items=data.n_items, nnz=data.nnz)
    train, test = stage("split", partial(leave_last_out, data))
    del data
    after("split")
    out.update(train=train.nnz, test=test.nnz)
    config = TrainConfig.from_dict(overrides)
    model = stage("fit", lambda: Recommender(config).fit(train, show_progress=False))
    after("fit")
    out["config"] = config.to_dict()
    out["epochs"] = [h["seconds"] for h in model.history_]
    out["epoch_bitset_bytes"] = bitsets if len(bitsets) == len(out["epochs"]) else None
    out["epoch_filter_bytes"] = filters if len(filters) == len(out["epochs"]) else None
    out["pairs_per_epoch"] = round(model.history_[0]["triplets_per_s"]
                                   * model.history_[0]["seconds"])
    out["index"] = model.index_kind_
    m = stage("evaluate", lambda: evaluate_ranking(model, train.matrix, test.matrix, k=(10,),
                                                   auc=False))
    out["cml"] = {k: m[k] for k in ("HR@10", "NDCG@10", "Recall@10", "MRR", "users")}
    if popularity:
        del model
        pop = stage("popularity", lambda: evaluate_ranking(
            Popularity().fit(train.matrix), train.matrix, test.matrix, k=(10,), auc=False))
        out["popularity"] = {k: pop[k] for k in ("HR@10", "NDCG@10", "Recall@10", "MRR")}
    # the pipeline's peak: read, split, fit, evaluate (popularity's is reported apart)
    out["peak_rss"] = max(s["peak"] for k, s in out["stages"].items() if k != "popularity")
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


# -- the parent ------------------------------------------------------------------------------------

def run_size(n: int, workdir: Path, seed: int, overrides: dict, popularity: bool,
             keep: bool, bitset_budget: int | None = None) -> dict:
    sys.path.insert(0, str(HERE))
    from synthetic import write_csv

    csv = workdir / f"synthetic-{n}-seed{seed}.csv"
    print(f"{n:,} interactions: writing {csv}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    if not csv.exists():
        write_csv(csv, n, seed=seed)
    gen_s = time.perf_counter() - t
    csv_mib = csv.stat().st_size / 2**20
    print(f"  generate   {gen_s:8.1f} s  {csv_mib:.0f} MiB", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--child", str(csv), "--config",
                           json.dumps(overrides), *([] if popularity else ["--no-popularity"]),
                           *([] if bitset_budget is None else ["--bitset-budget",
                                                               str(bitset_budget)])],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"the run at {n:,} interactions failed (exit {proc.returncode})")
    if not keep:
        csv.unlink()
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r.update(size=n, generate_s=gen_s, csv_mib=csv_mib, load_before=load,
             load_after=os.getloadavg()[0])
    return derive(r)


def derive(r: dict) -> dict:
    """The figures of a run computed from what the child measured. Epoch seconds per million
    use the median epoch (the mean and the fastest are kept beside): on a shared machine an
    epoch whose two lanes lose a core takes up to 2x as long. The epochs whose positives' bit
    rows passed the sampler's budget (``BUDGET``), and so searched sorted lists (with filters
    since the budget became 128 MiB), are timed apart (``lists``): about 2x as long per pair."""
    ep = np.array(r["epochs"])
    n, pairs = r["size"] / 1e6, r["pairs_per_epoch"] / 1e6
    bits = r.get("epoch_bitset_bytes")
    lists = ep[np.array(bits) == 0] if bits else ep[:0]
    fast = ep[np.array(bits) > 0] if bits else ep
    return {**r, "fit_s": r["stages"]["fit"]["seconds"], "epoch_s": float(np.median(ep)),
            "epoch_s_mean": float(ep.mean()), "epoch_s_min": float(ep.min()),
            "epoch_s_first": float(ep[0]), "epoch_s_per_million": float(np.median(ep) / n),
            "epoch_s_per_million_mean": float(ep.mean() / n),
            "epoch_s_per_million_min": float(ep.min() / n),
            "epoch_s_per_million_pairs": float(np.median(ep) / pairs),
            "lists_epochs": len(lists), "bitset_bytes_max": max(bits) if bits else None,
            "epoch_s_bitset": float(np.median(fast)) if len(fast) else None,
            "epoch_s_lists": float(np.median(lists)) if len(lists) else None,
            "fit_other_s": r["stages"]["fit"]["seconds"] - float(ep.sum()),
            "peak_rss_gb": r["peak_rss"] / GB, "memory": memory_model(r)}


# The fit's memory, computed from the code (bytes; T train pairs, E stored entries of the rows
# trained = T + the items' context entries, P pairs an epoch visits = E + the revisits):
#   32 T: the train Interactions (int32 item, float32 value, float64 time, int64 file row: 24)
#         and the pull's float64 weights (8)
#   13 E: the rows trained, CSR (int32 index + float32 value) and a latest flag (9); the
#         positives by item stratum each epoch (4; bit rows instead while they fit the
#         budget, or filters of the lists beside them within it: at most BUDGET, added)
#   8 (P - E): the revisited entries (int64)
#   12 P: the epoch's pairs (2 x int32) and each epoch's visiting order (int32)
# and per row of the two tables (users + a context row per item, items): 4 float32 rows of
# dim: the weights, the Adagrad accumulators, and the float64 running sum of the last 5 epochs'
# tables (2; before 2026-12-07 five copies and the mean's temporaries: 13 rows, 3,328 B).
PER_T, PER_E, PER_REVISIT, PER_P, ROWS_PER_TABLE_ROW = 32, 13, 8, 12, 4
REVISIT_SHARE = 1.2  # P / E with the defaults (each row's latest 10% visited twice more)


def memory_model(r: dict) -> dict:
    """The fit's peak predicted by the model above against the one measured, and the
    evaluation's bytes per score of a batch."""
    cfg = r["config"]
    row = cfg["dim"] * 4 * ROWS_PER_TABLE_ROW
    user_rows = r["n_users"] + (r["n_items"] if cfg["transitions"] else 0)
    t, p = r["train"], r["pairs_per_epoch"]
    e = p / (REVISIT_SHARE if cfg["recent_share"] and cfg["recent_visits"] > 1 else 1.0)
    per_pair = PER_T * t + PER_E * e + PER_REVISIT * (p - e) + PER_P * p
    rows = row * (user_rows + r["n_items"])
    filters = max(r.get("epoch_filter_bytes") or [0])  # the lists' filters, within BUDGET
    fit = r["stages"]["fit"]
    ev = r["stages"]["evaluate"]
    cells = min(1024, r["cml"]["users"]) * r["n_items"]
    return {"per_row": row, "user_rows": user_rows, "item_rows": r["n_items"],
            "per_interaction": per_pair / r["size"], "pairs_gb": per_pair / GB,
            "rows_gb": rows / GB, "filters_gb": filters / GB,
            "predicted_fit_peak_gb": (r["baseline_rss"] + per_pair + rows + filters) / GB,
            "fit_peak_gb": fit["peak"] / GB,
            "data_per_interaction": (fit["rss_before"] - r["baseline_rss"]) / r["size"],
            "eval_bytes_per_score": (ev["peak"] - ev["rss_before"]) / cells}


def estimate(runs: list[dict], n: int) -> dict:
    """``n`` interactions from the largest run, work and memory linear in the interactions
    (what the targets ask; the shapes grow with them, and U is 100 from 10,000 items on).
    The fit: the pairs per epoch scaled, at the largest run's median seconds per pair, and at
    the per-pair seconds of its sorted-list epochs where the positives' bit-set cannot fit
    the budget at ``n`` (the rows and the catalogue both grow, so the bit-set grows as n**2).
    The peak: on the line through the two largest runs and, as an upper bound, proportional
    above the baseline."""
    runs = sorted(runs, key=lambda r: r["size"])
    b = runs[-1]
    k = n / b["size"]
    epochs = len(b["epochs"])
    bitset = (b.get("bitset_bytes_max") or 0) * k * k
    per_epoch = b["epoch_s"]
    out = {"fit_s_median": k * (b["fit_other_s"] + epochs * per_epoch), "bitset_gb": bitset / GB}
    lists = [r for r in runs if r.get("epoch_s_lists")]
    if bitset > BUDGET and lists:
        r = lists[-1]
        per_epoch = r["epoch_s_lists"] / r["pairs_per_epoch"] * b["pairs_per_epoch"]
    out["fit_s"] = k * (b["fit_other_s"] + epochs * per_epoch)
    out["on_lists"] = per_epoch != b["epoch_s"]
    out["peak_gb_upper"] = (b["baseline_rss"] + k * (b["peak_rss"] - b["baseline_rss"])) / GB
    if len(runs) > 1:
        a = runs[-2]
        slope = (b["peak_rss"] - a["peak_rss"]) / (b["size"] - a["size"])
        out["peak_gb"] = (b["peak_rss"] + slope * (n - b["size"])) / GB
    return out


def _cells(*xs) -> str:
    return "| " + " | ".join(str(x) for x in xs) + " |"


NOTES = "<!-- notes: kept when the table is rewritten -->"


def report(runs: list[dict], args, overrides: dict, notes: str = "") -> str:
    runs = sorted(runs, key=lambda r: r["size"])
    sizes = [r["size"] for r in runs]
    big = 25_000_000
    nan = float("nan")
    lines = [
        "# Scale: CML from a CSV to a full evaluation at growing sizes",
        "",
        f"Command: `python experiments/bench_scale.py --sizes {','.join(map(str, sizes))}`"
        + (f" `--config '{json.dumps(overrides)}'`" if overrides else "")
        + f" (seed {args.seed}), run {args.date}.",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, shared with another engineer's work (load "
        "average at the start and end of each size in the last column).",
        "",
        "Data: `experiments/synthetic.py` (MovieLens-25M-shaped: users and items scaled "
        "linearly with the interactions, power-law activity and popularity, planted tastes and "
        "sequels, timestamps, no duplicate pairs; see its docstring). Each size runs in a fresh "
        "process: `read_ratings`, `leave_last_out`, `Recommender().fit` with the defaults, "
        "`evaluate_ranking` (full ranking, k=10, no AUC), then popularity's evaluation. Epoch s: "
        "the median epoch (mean; fastest), as the epochs of two lanes slow up to 2x whenever "
        "other work takes a core, and those whose positives' bit rows pass the sampler's 128 "
        "MiB budget search sorted lists with filters instead (counted apart). Peak: the "
        "process's `VmHWM`, "
        "reset before each stage (the largest of read, split, fit and evaluate); GB = 10^9 "
        "bytes.",
        "",
        "| interactions | users | items | generate s | read s | split s | fit s | epoch s "
        "| **s / M interactions** | s / M pairs | pairs / epoch | fit outside epochs s | "
        "evaluate s | epochs past the bit rows (median s) | peak GB: read / split / fit / "
        "evaluate | **peak GB** | load |",
        "|" + "---:|" * 17,
    ]
    for r in runs:
        st = r["stages"]
        lines.append(_cells(
            f"{r['size']:,}", f"{r['n_users']:,}", f"{r['n_items']:,}",
            f"{r['generate_s']:.1f}", f"{st['read']['seconds']:.1f}",
            f"{st['split']['seconds']:.1f}", f"{r['fit_s']:.0f}",
            f"{r['epoch_s']:.2f} ({r['epoch_s_mean']:.2f}; {r['epoch_s_min']:.2f})",
            f"**{r['epoch_s_per_million']:.2f}** ({r['epoch_s_per_million_mean']:.2f}; "
            f"{r['epoch_s_per_million_min']:.2f})", f"{r['epoch_s_per_million_pairs']:.2f}",
            f"{r['pairs_per_epoch']:,}", f"{r['fit_other_s']:.1f}",
            f"{st['evaluate']['seconds']:.1f}",
            "-" if r.get("bitset_bytes_max") is None else
            f"{r['lists_epochs']}" + (f" ({r['epoch_s_lists']:.1f})" if r["lists_epochs"] else ""),
            " / ".join(f"{st[s]['peak'] / GB:.2f}" for s in ("read", "split", "fit",
                                                              "evaluate")),
            f"**{r['peak_rss_gb']:.2f}**", f"{r['load_before']:.1f}-{r['load_after']:.1f}"))
    lines += ["", "Quality (test: each user's latest interaction; full ranking):", "",
              "| interactions | CML HR@10 | CML NDCG@10 | popularity HR@10 | popularity NDCG@10 "
              "| popularity evaluate s |", "|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        p = r.get("popularity", {})
        lines.append(_cells(f"{r['size']:,}", f"{r['cml']['HR@10']:.4f}",
                            f"{r['cml']['NDCG@10']:.4f}", f"{p.get('HR@10', nan):.4f}",
                            f"{p.get('NDCG@10', nan):.4f}",
                            f"{r['stages'].get('popularity', {}).get('seconds', nan):.1f}"))
    per_m = [r["epoch_s_per_million"] for r in runs]
    ratio = max(per_m) / min(per_m)
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---:|---|",
              _cells(f"epoch s per million interactions within {TARGETS['linear']}x from "
                     f"{sizes[0]:,} to {sizes[-1]:,} (median epochs)", f"{ratio:.2f}x",
                     "yes" if ratio <= TARGETS["linear"] else "**no**")]
    measured = {r["size"]: r for r in runs}
    if big in measured:
        r = measured[big]
        lines += [_cells("25 M fit <= 15 min", f"{r['fit_s'] / 60:.1f} min",
                         "yes" if r["fit_s"] <= TARGETS["fit_s_25m"] else "**no**"),
                  _cells("25 M peak RSS <= 6 GB", f"{r['peak_rss_gb']:.2f} GB",
                         "yes" if r["peak_rss_gb"] <= TARGETS["peak_gb_25m"] else "**no**")]
    else:
        e = estimate(runs, big)
        peak = e.get("peak_gb", e["peak_gb_upper"])
        lines += [
            _cells(f"25 M fit <= 15 min (not run: linear from {sizes[-1]:,} "
                   + (f"with every epoch on sorted lists, as a {e['bitset_gb']:.1f} GB bit-set "
                      "cannot fit, at their cost per pair; at the median epoch's)"
                      if e["on_lists"] else "at the median epoch's cost per pair)"),
                   f"~{e['fit_s'] / 60:.0f} min"
                   + (f" ({e['fit_s_median'] / 60:.0f})" if e["on_lists"] else ""),
                   "estimate: " + ("yes" if e["fit_s"] <= TARGETS["fit_s_25m"] else "**no**")),
            _cells("25 M peak RSS <= 6 GB (not run: on the line through the two largest; "
                   "proportional above the baseline)",
                   f"~{peak:.1f} GB ({e['peak_gb_upper']:.1f})",
                   "estimate: " + ("yes" if e["peak_gb_upper"] <= TARGETS["peak_gb_25m"]
                                   else "**no**"))]
    lines += [
        "", "## Memory model", "",
        "The fit holds, per train pair T, stored entry E of the rows trained (T plus the items' "
        "context entries) and pair P visited per epoch (E plus the revisits; E taken as P / "
        f"{REVISIT_SHARE}), in bytes: **{PER_T} T + {PER_E} E + {PER_REVISIT} (P - E) + "
        f"{PER_P} P**, about 85 per interaction with the defaults (train pairs and the pull's "
        "weights 32 T; rows trained and a latest flag 9 E, positives by stratum 4 E; revisits "
        "8; the epoch's pairs 8 P and visiting order 4 P), the sorted lists' filters where "
        "the positives' bit rows pass the sampler's budget (at most 128 MiB: measured per "
        "epoch), and per row of its two tables "
        f"(a row per user plus a context row per item; a row per item) **{ROWS_PER_TABLE_ROW} "
        f"float32 rows of dim 64 = {ROWS_PER_TABLE_ROW * 256:,} B** (weights, Adagrad "
        "accumulators, and the float64 running sum of the last 5 epochs' tables), above "
        "the process's baseline (Python, torch, numba's kernels, pandas, pyarrow: measured). "
        "All computed from the code; the measured fit peak checks it. The evaluation adds a "
        "batch of 1,024 users x the catalogue, in bytes per score (measured).",
        "", "| interactions | baseline GB | B per interaction (computed) | user + context rows "
        "| item rows | rows GB (computed) | filters GB | fit peak GB: predicted / measured "
        "| train + test "
        "B per interaction (measured) | evaluation B per score (measured) |",
        "|" + "---:|" * 10]
    for r in runs:
        mm = r["memory"]
        lines.append(_cells(
            f"{r['size']:,}", f"{r['baseline_rss'] / GB:.2f}", f"{mm['per_interaction']:.0f}",
            f"{mm['user_rows']:,}", f"{mm['item_rows']:,}", f"{mm['rows_gb']:.3f}",
            f"{mm.get('filters_gb', 0):.3f}",
            f"{mm['predicted_fit_peak_gb']:.2f} / {mm['fit_peak_gb']:.2f}",
            f"{mm['data_per_interaction']:.0f}", f"{mm['eval_bytes_per_score']:.0f}"))
    return "\n".join(lines) + "\n\n" + NOTES + "\n" + notes


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,5000000,25000000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="TrainConfig overrides, a JSON object")
    ap.add_argument("--no-popularity", action="store_true")
    ap.add_argument("--workdir", type=Path, help="where the CSVs go (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the CSVs (and reuse them)")
    ap.add_argument("--md", type=Path, default=HERE / "results" / "scale.md")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "scale.json")
    ap.add_argument("--from-json", type=Path,
                    help="rewrite --md (and --json, when the same file) from the runs of a "
                         "scale.json, running nothing")
    ap.add_argument("--bitset-budget", type=int,
                    help="what-if: the sampler's budget in bytes for the positives' bit rows "
                         "or filters (package default 128 MiB; 0: sorted lists alone)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    overrides = json.loads(args.config)
    if args.child:
        print(json.dumps(child(args.child, overrides, not args.no_popularity,
                               args.bitset_budget)))
        return {}
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        runs = [derive(r) for r in saved["runs"]]
        overrides, args.seed, args.date = saved["overrides"], saved["seed"], saved["date"]
    else:
        args.date = date.today().isoformat()
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            workdir = args.workdir if args.keep and args.workdir else Path(tmp)
            runs = [run_size(int(float(n)), workdir, args.seed, overrides,
                             not args.no_popularity, args.keep, args.bitset_budget)
                    for n in args.sizes.split(",")]
    old = args.md.read_text() if args.md.exists() else ""
    notes = old.split(NOTES, 1)[1].lstrip("\n") if NOTES in old else ""
    args.md.write_text(report(runs, args, overrides, notes))
    headline = {"sizes": [r["size"] for r in runs],
                "fit_s": [round(r["fit_s"], 1) for r in runs],
                "epoch_s_per_million": [round(r["epoch_s_per_million"], 3) for r in runs],
                "peak_rss_gb": [round(r["peak_rss_gb"], 3) for r in runs]}
    if not (args.from_json and args.from_json.resolve() != args.json.resolve()):
        args.json.write_text(json.dumps({**headline, "seed": args.seed, "overrides": overrides,
                                         "date": args.date, "runs": runs}, indent=1) + "\n")
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()
