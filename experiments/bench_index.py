"""Exact vs Annoy nearest-item search against catalogue size: the crossover for AUTO_ANNOY_ITEMS.

``AUTO_ANNOY_ITEMS`` (``recsys_metric/index.py``) is the size above which ``index="auto"`` picks
Annoy. Vectors like a trained CML model's, all from ``--seed``: ``--dim`` 64, float32, a mixture
of 100 Gaussian clusters of unequal weight and spread, rows clipped to the unit ball (as CML clips
them); the query "users" are drawn from the same clusters. For each size, the package's classes:

- exact: ``ExactIndex(items).query(q, 10)`` on a batch of 1000 queries (ms per query, best of 3),
  scored in the package's blocks (``index.SCORE_BLOCK_FLOATS``: 64 MiB of scores, at most
  4096 rows);
- annoy: ``AnnoyIndex(items, --trees)`` build seconds (``n_jobs=1``), then ``calibrate`` on 500
  probe users to recall@10 0.98, as ``Recommender._build_index`` does; the batch of 1000
  (``AnnoyIndex.query`` loops over the rows, as the package does), its recall@10 against exact
  (other users than the probe), the chosen ``search_k`` and the size of the saved file;
- one query: median over 50 queries (after 5 warm-up) of the best of 3 passes over them, exact
  and Annoy interleaved query by query (the same machine load for both).

The machine may be shared: a busy core stalls torch's second thread for milliseconds, hence the
best of 3 passes per query. Each timing also first waits (up to 20 s) until other processes use
under 0.25 cores (``/proc/stat`` less this process's time), and the single-query timing is taken
again (up to 3 times in all) when they used more meanwhile; the table shows what they used.

The crossover is the smallest measured size from which Annoy is faster at every larger size,
and, between it and the size below, where the two log-log latency lines cross. As Annoy's recall
is below 1, the constant the measurements support is where Annoy beats exact both for one query
and in a batch (exact's best case), rounded to a multiple of half its power of ten.

    python experiments/bench_index.py --out-dir experiments/results
    python experiments/bench_index.py --sizes 10000,30000 --out-dir /tmp/bench_index   # smoke

``--out-dir`` writes ``index.md``, ``index.json`` and ``index.png`` there; ``--render
experiments/results/index.json`` reports saved rows again without measuring. Progress goes to
stderr; the last line printed is one JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from common import header, row

from recsys_metric.index import AUTO_ANNOY_ITEMS, SCORE_BLOCK_FLOATS, AnnoyIndex, ExactIndex

K, TARGET, PROBE, BATCH, SINGLE, WARMUP, REPEAT = 10, 0.98, 500, 1000, 50, 5, 3
RUNS = 3  # passes over the single queries, each one's best kept: a busy core stalls torch
QUIET, TRIES = 0.25, 3  # single-query timing taken again (TRIES in all) when others used QUIET
COLUMNS = ("items", "others", "exact single ms", "exact batch ms/q", "exact chunk",
           "annoy build s", "search_k", "annoy single ms", "annoy batch ms/q", "annoy recall@10",
           "annoy file MB")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)  # progress on stderr: stdout ends with the JSON line


class Clusters:
    """A mixture of ``n`` Gaussian clusters inside the unit ball: centres at radius 0.3-0.9,
    per-coordinate spread such that a point lies 0.15-0.45 from its centre, Dirichlet weights."""

    def __init__(self, dim: int, seed: int, n: int = 100) -> None:
        rng = np.random.default_rng([seed, 0])
        c = rng.standard_normal((n, dim))
        self.centres = (c / np.linalg.norm(c, axis=1, keepdims=True)
                        * rng.uniform(0.3, 0.9, (n, 1))).astype(np.float32)
        self.spread = (rng.uniform(0.15, 0.45, (n, 1)) / np.sqrt(dim)).astype(np.float32)
        self.weights = rng.dirichlet(np.ones(n))
        self.seed = seed

    def draw(self, n: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, n])
        which = rng.choice(len(self.weights), n, p=self.weights)
        x = rng.standard_normal((n, self.centres.shape[1]), dtype=np.float32)
        x *= self.spread[which]
        x += self.centres[which]
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1.0)  # clip to the unit ball
        return x


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far: all cores busy (``/proc/stat``), and this process's own."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    own = os.times()
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


class Others:
    """Cores that other processes kept busy during a with-block (the machine is shared)."""

    def __enter__(self) -> Others:
        self.t, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        (all1, own1), (all0, own0) = cpu_seconds(), self.cpu
        self.cores = max(0.0, all1 - all0 - (own1 - own0)) / (time.perf_counter() - self.t)


def wait_quiet(max_wait: float = 20.0) -> None:
    """Wait (at most ``max_wait`` s) until other processes use under QUIET cores for 0.5 s."""
    t = time.perf_counter()
    while time.perf_counter() - t < max_wait:
        with Others() as o:
            time.sleep(0.5)
        if o.cores < QUIET:
            return
        log(f"  other processes use {o.cores:.1f} cores: waiting")
        time.sleep(5)


def single_ms(indexes: list, queries: np.ndarray) -> list[float]:
    """Median over single queries of ``index.query(q, K)`` ms for each index, interleaved query by
    query so that all see the same machine load; RUNS passes over the queries, each query's best
    pass kept."""
    for q in queries[:WARMUP]:
        for index in indexes:
            index.query(q, K)
    times = np.full((len(queries), len(indexes)), np.inf)
    for _ in range(RUNS):
        for i, q in enumerate(queries):
            for j, index in enumerate(indexes):
                t = time.perf_counter()
                index.query(q, K)
                times[i, j] = min(times[i, j], time.perf_counter() - t)
    return [1e3 * float(m) for m in np.median(times, axis=0)]


def batch_ms(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Best-of-REPEAT ms per query of ``index.query(queries, K)``, and its ids."""
    best = np.inf
    wait_quiet()
    for _ in range(REPEAT):
        t = time.perf_counter()
        ids, _ = index.query(queries, K)
        best = min(best, time.perf_counter() - t)
    return 1e3 * best / len(queries), ids


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, truth,
                                                                       strict=True)]))


def measure(items: np.ndarray, probe: np.ndarray, evaluate: np.ndarray, trees: int,
            seed: int) -> dict:
    n = len(items)
    chunk = min(1000, max(1, SCORE_BLOCK_FLOATS // n))  # the package's block, of 1000 queries
    exact = ExactIndex(items)
    r = {"items": n, "load": os.getloadavg()[0], "exact_chunk": chunk}
    r["exact_batch_ms"], truth = batch_ms(exact, evaluate)
    log(f"  exact batch: {r['exact_batch_ms']:.3f} ms/q")
    wait_quiet()
    t = time.perf_counter()
    annoy = AnnoyIndex(items, n_trees=trees, seed=seed)
    r["annoy_build_s"] = time.perf_counter() - t
    log(f"  annoy build: {r['annoy_build_s']:.1f} s")
    t = time.perf_counter()
    r["probe_recall"] = annoy.calibrate(probe, exact, K, TARGET)
    r["calibrate_s"] = time.perf_counter() - t
    r["search_k"] = annoy.search_k
    r["annoy_batch_ms"], got = batch_ms(annoy, evaluate)
    r["annoy_recall"] = recall(got, truth)
    for _ in range(TRIES):  # the median of single queries suffers most from a busy machine
        wait_quiet()
        with Others() as o:
            single = single_ms([exact, annoy], evaluate[:SINGLE])
        if "others" not in r or o.cores < r["others"]:
            (r["exact_single_ms"], r["annoy_single_ms"]), r["others"] = single, o.cores
        if o.cores < QUIET:
            break
    with tempfile.TemporaryDirectory() as tmp:
        annoy.save(Path(tmp) / "items.ann")
        r["annoy_file_mb"] = (Path(tmp) / "items.ann").stat().st_size / 2**20
    log(f"  annoy: search_k {r['search_k']} ({r['calibrate_s']:.1f} s to calibrate), "
        f"{r['annoy_batch_ms']:.3f} ms/q batch, recall@10 {r['annoy_recall']:.4f}, "
        f"{r['annoy_file_mb']:.0f} MB; single query: exact {r['exact_single_ms']:.3f} ms, "
        f"annoy {r['annoy_single_ms']:.3f} ms")
    return r


def crossover(sizes: list[int], exact: list[float], annoy: list[float]
              ) -> tuple[int | None, float | None]:
    """The smallest size from which Annoy is faster at every larger size (None: never), and
    where the log-log lines cross between it and the size below (None: it is the smallest)."""
    first = None
    for i in reversed(range(len(sizes))):
        if annoy[i] >= exact[i]:
            break
        first = i
    if not first:
        return (None if first is None else sizes[0]), None
    x = np.log(sizes[first - 1:first + 1])
    gap = np.log(exact[first - 1:first + 1]) - np.log(annoy[first - 1:first + 1])
    return sizes[first], float(np.exp(x[0] + (x[1] - x[0]) * -gap[0] / (gap[1] - gap[0])))


def describe(first: int | None, at: float | None, sizes: list[int],
             ahead: list[int] = ()) -> str:
    """How :func:`crossover`'s result reads; ``ahead``: sizes where Annoy is faster all the same."""
    if first is None:
        return f"at no size measured (up to {sizes[-1]:,})"
    if at is None:
        return f"already at the smallest size measured ({sizes[0]:,})"
    also = [n for n in ahead if n < first]
    return (f"from {first:,} items on; the log-log lines cross at about {at:,.0f}" +
            (f" (Annoy is also ahead at {', '.join(f'{n:,}' for n in also)}: the lines run "
             f"close there)" if also else ""))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def plot(rows: list[dict], path: Path, cross: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["items"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("single", "batch"), strict=True):
        ax.loglog(n, [r[f"exact_{kind}_ms"] for r in rows], "o-", label="exact (torch)")
        ax.loglog(n, [r[f"annoy_{kind}_ms"] for r in rows], "s-",
                  label="annoy (calibrated to recall@10 0.98)")
        ax.axvline(AUTO_ANNOY_ITEMS, color="grey", ls=":",
                   label=f"AUTO_ANNOY_ITEMS = {AUTO_ANNOY_ITEMS:,}")
        if cross[f"{kind}_interp"]:
            ax.axvline(cross[f"{kind}_interp"], color="red", ls="--",
                       label=f"crossover ~ {cross[f'{kind}_interp']:,.0f}")
        ax.set_title("one query" if kind == "single" else f"batch of {BATCH} (ms per query)")
        ax.set_xlabel("items")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("ms per query")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cells(r: dict) -> list[str]:
    return [f"{r['items']:,}", f"{r['others']:.2f}", f"{r['exact_single_ms']:.3f}",
            f"{r['exact_batch_ms']:.3f}", str(r["exact_chunk"]),
            f"{r['annoy_build_s']:.1f}", f"{r['search_k']:,}", f"{r['annoy_single_ms']:.3f}",
            f"{r['annoy_batch_ms']:.3f}", f"{r['annoy_recall']:.4f}", f"{r['annoy_file_mb']:.0f}"]


def round_half(x: float) -> int:
    """``x`` rounded to a multiple of half its power of ten (59,256 -> 60,000; 244,347 ->
    250,000)."""
    step = 10 ** int(np.floor(np.log10(x))) / 2
    return int(round(x / step) * step)


def at_size(rows: list[dict], key: str, n: float) -> float:
    """``key`` at ``n`` items, interpolated on log-log between the sizes measured."""
    x = np.log([r["items"] for r in rows])
    return float(np.exp(np.interp(np.log(n), x, np.log([r[key] for r in rows]))))


def recommend(rows: list[dict], cross: dict) -> tuple[int | None, str]:
    """The constant the measurements support: the size from which Annoy is faster both for one
    query and in a batch (exact's best case), rounded; and the reason."""
    ends = []
    for kind in ("single", "batch"):
        if cross[kind] is None:
            return None, (f"Annoy never stays faster ({kind}) up to {rows[-1]['items']:,} "
                          f"items: `AUTO_ANNOY_ITEMS` should be at least that")
        ends.append(cross[f"{kind}_interp"] or cross[kind])
    rec = round_half(max(ends))
    return rec, (f"`AUTO_ANNOY_ITEMS` = **{rec:,}**, where Annoy starts to beat exact in a "
                 f"batch as well as for one query")


def interpret(rows: list[dict], cross: dict) -> str:
    lo, hi = rows[0], rows[-1]
    rec, reason = recommend(rows, cross)
    recalls = [r["annoy_recall"] for r in rows]
    ratios = ", ".join(f"{r['exact_single_ms'] / r['annoy_single_ms']:.1f}x at {r['items']:,}"
                       for r in rows)
    text = f"""
## Interpretation

- The package queries its index in batches: `Recommender.recommend` on a list of users, and
the server's requests of one event-loop turn, go to the index as one `query` (the batch columns);
`similar_items` and a lone request are one query. Annoy gains nothing from a batch
(`AnnoyIndex.query` loops over it).
- One query: exact grows linearly with the catalogue ({lo['exact_single_ms']:.2f} ms at
{lo['items']:,} items, {hi['exact_single_ms']:.1f} ms at {hi['items']:,}): every call reads all
item vectors and writes a score per item, so it is memory-bound. Annoy's time grows slowly
({lo['annoy_single_ms']:.2f} -> {hi['annoy_single_ms']:.2f} ms, `search_k`
{lo['search_k']:,} -> {hi['search_k']:,}). Exact / Annoy: {ratios}.
- Annoy's recall@10 is {min(recalls):.3f}-{max(recalls):.3f}: it misses
{1 - max(recalls):.1%}-{1 - min(recalls):.1%} of the true top 10. So latency alone is not the
rule: exact is kept while it matches Annoy in its best case (a batch), and Annoy chosen from
where it wins both ways.
"""
    if rec is None:
        return text + f"- Measurements support: {reason}.\n"
    text += (f"- Measurements support {reason}. Below it exact batched scoring is about as fast "
             f"per query as Annoy, as the comment in `index.py` says; one exact query costs up to "
             f"about {at_size(rows, 'exact_single_ms', rec):.1f} ms there (Annoy "
             f"{at_size(rows, 'annoy_single_ms', rec):.1f} ms), Annoy's build about "
             f"{at_size(rows, 'annoy_build_s', rec):.0f} s.\n")
    if lo["items"] <= AUTO_ANNOY_ITEMS <= hi["items"]:
        e1, a1, eb, ab = (at_size(rows, k, AUTO_ANNOY_ITEMS) for k in (
            "exact_single_ms", "annoy_single_ms", "exact_batch_ms", "annoy_batch_ms"))
        verdict = ("too high" if rec < AUTO_ANNOY_ITEMS / 1.5 else
                   "too low" if rec > AUTO_ANNOY_ITEMS * 1.5 else "about right")
        text += (f"- By that rule the current {AUTO_ANNOY_ITEMS:,} is **{verdict}**: there exact "
                 f"takes {eb:.2f} ms per query in a batch vs {ab:.2f} with Annoy, and "
                 f"{e1:.1f} ms vs {a1:.2f} for one query ({e1 / a1:.1f}x).\n")
    single = describe(cross["single"], cross["single_interp"], [r["items"] for r in rows])
    return text + (f"- For one query (`similar_items`, a lone request), Annoy is faster "
                   f"{single}: a lower constant would buy that speed-up with "
                   f"{1 - max(recalls):.1%}-{1 - min(recalls):.1%} of the top 10.\n")


def wrap(text: str, width: int = 100) -> str:
    """Reflow the paragraphs and list items of markdown ``text``; tables, headings, images
    and lines in backticks alone stay as they are."""
    out = []
    for block in text.strip("\n").split("\n\n"):
        if block.startswith(("|", "#", "!", "`")):
            out.append(block)
            continue
        items = [" ".join(i.split()) for i in ("\n" + block).split("\n- ")]
        lead, bullets = items[0], items[1:]
        lines = [textwrap.fill(lead, width, break_long_words=False, break_on_hyphens=False)
                 ] if lead else []
        lines += [textwrap.fill(b, width, initial_indent="- ", subsequent_indent="  ",
                                break_long_words=False, break_on_hyphens=False)
                  for b in bullets]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def write_md(path: Path, rows: list[dict], cross: dict, meta: dict) -> None:
    table = "\n".join([header(COLUMNS[:1], COLUMNS[1:]), *(row(cells(r)) for r in rows)])
    sizes = [r["items"] for r in rows]
    ahead = [r["items"] for r in rows if r["annoy_batch_ms"] < r["exact_batch_ms"]]
    path.write_text(wrap(f"""# Nearest-item index: exact vs Annoy against catalogue size

Command:

```
{meta['command']}
```

Date: {meta['date']}. Machine: 2 cores ({meta['cpu']}), shared with another engineer's work
(load average {meta['load_before']} before, {meta['load_after']} after). Each timing waits, up
to 20 s, until other processes use under {QUIET} cores; `others` below: the cores they used
during the single-query timing (taken again, up to {TRIES} times in all, when above {QUIET}).
Torch threads
{meta['torch_threads']}, Annoy built with `n_jobs=1`. Python {meta['python']}, torch
{meta['torch']}, annoy {meta['annoy']}, numpy {meta['numpy']}.

Data (seed {meta['seed']}): {meta['dim']}-d float32 item vectors like a trained CML model's, a
mixture of 100 Gaussian clusters of unequal weight and spread, clipped to the unit ball; query
users drawn from the same clusters. Annoy: {meta['trees']} trees, `search_k` calibrated on
{PROBE} probe users to recall@10 {TARGET} (`AnnoyIndex.calibrate`, as
`Recommender._build_index` does); the recall@10 below is on {BATCH} other users. Single query:
median over {SINGLE} queries (after {WARMUP} warm-up) of each one's best of {RUNS} passes over
them (a busy core stalls torch's second thread), exact and Annoy interleaved query by query.
Batch: {BATCH} queries in one `query` call, best of {REPEAT}, ms per query; the exact index scores
them `exact chunk` rows at a time (the package's block: 64 MiB of float32 scores).

{table}

![latency](index.png)

## Crossover

- One query: Annoy is faster {describe(cross['single'], cross['single_interp'], sizes)}.
- Batch of {BATCH}: Annoy is faster {describe(cross['batch'], cross['batch_interp'], sizes, ahead)}.
{interpret(rows, cross)}"""))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,30000,100000,300000,1000000,2000000",
                    help="catalogue sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--trees", type=int, default=50, help="Annoy n_trees (package default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, help="write index.md, index.json, index.png here")
    ap.add_argument("--render", type=Path, metavar="INDEX_JSON",
                    help="measure nothing: report the rows of a saved index.json again")
    args = ap.parse_args(argv)

    if args.render:
        saved = json.loads(args.render.read_text())
        rows, meta = saved["rows"], saved["meta"]
    else:
        meta = {"command": shlex.join(["python", "experiments/bench_index.py", *sys.argv[1:]]),
                "date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                "load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
                "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                "torch": torch.__version__, "annoy": version("annoy"), "numpy": np.__version__,
                "seed": args.seed, "dim": args.dim, "trees": args.trees}
        clusters = Clusters(args.dim, args.seed)
        queries = clusters.draw(PROBE + BATCH, stream=2)
        probe, evaluate = queries[:PROBE], queries[PROBE:]
        rows = []
        for n in map(int, args.sizes.split(",")):
            log(f"{n:,} items (load {os.getloadavg()[0]:.2f})")
            items = clusters.draw(n, stream=1)
            rows.append(measure(items, probe, evaluate, args.trees, args.seed))
            del items
            gc.collect()
        meta["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())

    sizes = [r["items"] for r in rows]
    cross = {}
    for kind in ("single", "batch"):
        cross[kind], cross[f"{kind}_interp"] = crossover(
            sizes, [r[f"exact_{kind}_ms"] for r in rows], [r[f"annoy_{kind}_ms"] for r in rows])

    width = [max(len(c), 9) for c in COLUMNS]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, width, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(cells(r), width, strict=True)))
    print(f"one query: Annoy faster {describe(cross['single'], cross['single_interp'], sizes)}")
    print(f"batch: Annoy faster {describe(cross['batch'], cross['batch_interp'], sizes)}")
    print(f"supported: {recommend(rows, cross)[1]}")

    def col(key: str, digits: int = 4) -> list:
        return [round(r[key], digits) for r in rows]

    headline = {"sizes": sizes, "exact_single_ms": col("exact_single_ms"),
                "exact_batch_ms": col("exact_batch_ms"),
                "annoy_single_ms": col("annoy_single_ms"),
                "annoy_batch_ms": col("annoy_batch_ms"), "annoy_recall@10": col("annoy_recall"),
                "annoy_build_s": col("annoy_build_s", 1), "search_k": col("search_k"),
                "annoy_file_mb": col("annoy_file_mb", 1),
                "crossover_single": cross["single"], "crossover_batch": cross["batch"],
                "crossover_single_interp": cross["single_interp"] and round(cross["single_interp"]),
                "crossover_batch_interp": cross["batch_interp"] and round(cross["batch_interp"]),
                "recommended_auto_annoy_items": recommend(rows, cross)[0]}
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_md(args.out_dir / "index.md", rows, cross, meta)
        (args.out_dir / "index.json").write_text(json.dumps(
            {"meta": meta, "rows": rows, "headline": headline}, indent=1) + "\n")
        plot(rows, args.out_dir / "index.png", cross)
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()
