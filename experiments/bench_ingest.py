"""Ingest benchmark: time and peak memory of ``read_ratings`` on a large generated ratings file.

The file (a CSV ``user,item,rating,timestamp`` by default; ``--path x.dat`` writes a headerless
``::`` file, ``.gz`` gzips it; the same bytes for a seed) has integer user ids and
string item ids (``tt0001234``), both drawn power-law-ish (a few users and items hold most rows),
ratings 1-5 and integer timestamps. Each reader runs in a fresh Python process: the baseline is
its resident memory after the imports, the peak its high-water mark while reading (``VmHWM``,
reset to the baseline first; ``ru_maxrss`` would do, but it survives ``exec`` and so starts at
this script's own peak, which generating the file makes large); bytes per row = (peak -
baseline) / rows. A thread sampling ``/proc/self/statm`` every 2 ms is printed beside it as a
check (it misses short peaks).

    python experiments/bench_ingest.py                      # 5,000,000 rows, the package reader
    python experiments/bench_ingest.py --rows 1000000 --legacy /tmp/old_data.py
    python experiments/bench_ingest.py --path /tmp/ratings.dat.gz   # kept for the next run

``--legacy PATH`` also measures another reader module (a saved copy of an older
``recsys_metric/data.py``: ``git show REV:recsys_metric/data.py > /tmp/old_data.py``) on the
same file and checks that both readers give identical results (ids, CSR, timestamps, rows).
The last line printed is one JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from recsys_metric.reading import open_binary

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: argv = [reader module path or "", csv path].
CHILD = r"""
import gc, hashlib, importlib.util, json, os, sys, threading, time
import numpy as np, pandas, scipy.sparse, pyarrow, pyarrow.csv, pyarrow.compute  # in the baseline
sys.path.insert(0, os.environ["BENCH_ROOT"])
if sys.argv[1]:
    spec = importlib.util.spec_from_file_location("legacy_data", sys.argv[1])
    reader = sys.modules["legacy_data"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)
else:
    from recsys_metric import reading as reader
PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

def high_water():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
except OSError:
    pass
base = rss()
sampled, done = [base], threading.Event()

def sample():
    while not done.wait(0.002):
        sampled[0] = max(sampled[0], rss())

thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
d = reader.read_ratings(sys.argv[2])
seconds = time.perf_counter() - t0
done.set()
thread.join()
peak = high_water()
h = hashlib.sha256()
for ids in (d.users.ids, d.items.ids):
    h.update("\n".join(ids).encode())
for a in (d.matrix.indptr, d.matrix.indices, d.timestamps, d.rows):
    h.update(np.ascontiguousarray(a).tobytes())
print(json.dumps({"seconds": seconds, "baseline": base, "peak": peak, "sampled_peak": sampled[0],
                  "users": d.n_users, "items": d.n_items, "nnz": d.nnz,
                  "digest": h.hexdigest()}))
"""


def generate(path: Path, rows: int, seed: int = 0, users: int = 100_000, items: int = 20_000,
             chunk: int = 1_000_000) -> None:
    """Write the ratings file (the same bytes for the same arguments): a CSV with a header, or
    for a name with ``.dat`` a headerless ``::`` file; gzipped for a name ending ``.gz``."""
    rng = np.random.default_rng(seed)
    user_ids = rng.permutation(users) + 1  # integer ids, not in file order
    item_ids = np.char.add("tt", np.char.zfill((rng.permutation(items) * 7 + 11).astype(str), 7))
    sep = "::" if ".dat" in path.name else ","
    with (gzip.open if path.suffix == ".gz" else open)(path, "wt", encoding="utf-8") as f:
        if sep == ",":
            f.write("user,item,rating,timestamp\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            # u**k concentrates on small indices: a long tail of light users and items
            u = user_ids[(users * rng.random(n) ** 2.5).astype(np.int64)]
            i = item_ids[(items * rng.random(n) ** 3.0).astype(np.int64)]
            r = rng.integers(1, 6, n)
            t = 900_000_000 + rng.integers(0, 500_000_000, n)
            fields = (u.astype(str), i, r.astype(str), t.astype(str))
            lines = fields[0]
            for x in fields[1:]:
                lines = np.char.add(np.char.add(lines, sep), x)
            f.write("\n".join(lines.tolist()))
            f.write("\n")


def count_rows(path: Path) -> int:
    """Data rows of a file :func:`generate` wrote (no blank lines; a header unless ``.dat``)."""
    with open_binary(path) as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))
    return lines - (".dat" not in path.name)


def measure(path: Path, reader: str = "") -> dict:
    """Read ``path`` in a fresh process with the package reader (or the module at ``reader``)."""
    out = subprocess.run([sys.executable, "-c", CHILD, reader, str(path)],
                         capture_output=True, text=True,
                         env={**os.environ, "BENCH_ROOT": str(ROOT)})
    if out.returncode:
        sys.exit(f"the reader failed on {path}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--path", type=Path,
                    help="file to read, generated there if missing (default: a temporary "
                         "ratings.csv); the name picks the format: .csv, .dat (::), + .gz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--legacy", help="another reader module to measure and compare")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or Path(tmp) / "ratings.csv"
        if not path.exists():
            generate(path, args.rows, args.seed)
        runs = {}
        if args.legacy:
            runs["legacy"] = measure(path, str(Path(args.legacy).resolve()))
        runs["recsys_metric"] = measure(path, "")
        size, rows = path.stat().st_size, count_rows(path)
    print(f"{path.name}: {rows:,} rows, {size / 2**20:.0f} MiB")
    print(f"{'reader':<14} {'seconds':>8} {'peak MiB':>9} {'bytes/row':>10} {'sampled':>8} "
          f"{'users':>7} {'items':>6} {'nnz':>9}  digest")
    for name, r in runs.items():
        r["per_row"] = round((r["peak"] - r["baseline"]) / rows, 1)
        print(f"{name:<14} {r['seconds']:8.2f} {(r['peak'] - r['baseline']) / 2**20:9.0f} "
              f"{r['per_row']:10.1f} {(r['sampled_peak'] - r['baseline']) / rows:8.1f} "
              f"{r['users']:7d} {r['items']:6d} {r['nnz']:9d}  {r['digest'][:12]}")
    new = runs["recsys_metric"]
    headline = {"rows": rows, "peak_rss_bytes_per_row": new["per_row"],
                "seconds": round(new["seconds"], 2)}
    if args.legacy:
        old = runs["legacy"]
        headline.update(legacy_peak_rss_bytes_per_row=old["per_row"],
                        legacy_seconds=round(old["seconds"], 2),
                        identical=old["digest"] == new["digest"])
    print(json.dumps(headline))
    return headline


if __name__ == "__main__":
    main()
