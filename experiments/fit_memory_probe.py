"""One-off probe: where in a default fit the resident memory peaks (RSS polled every 10 ms, the
epochs' ends marked by a callback).

    python experiments/fit_memory_probe.py /tmp/scalecsv/synthetic-5000000-seed0.csv

Result (the 5 M synthetic log, 2026-12-07) in ``results/scale.md``, notes.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

from recsys_metric import Recommender, TrainConfig, leave_last_out, read_ratings
from recsys_metric.warmup import warm


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def main(csv: str) -> None:
    warm()
    train, _test = leave_last_out(read_ratings(csv))
    gc.collect()
    samples, ends, done = [], [], threading.Event()

    def poll() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss()))
            time.sleep(0.01)

    t0, base = time.perf_counter(), rss()
    threading.Thread(target=poll, daemon=True).start()
    Recommender(TrainConfig()).fit(train, show_progress=False,
                                   callbacks=[lambda epoch, logs: ends.append(time.perf_counter())])
    t1 = time.perf_counter()
    done.set()

    def peak(lo: float, hi: float) -> tuple[float, float]:
        t, r = max(((t, r) for t, r in samples if lo <= t < hi), key=lambda s: s[1])
        return r / 1e9, t - t0

    print(f"RSS before the fit (data split): {base / 1e9:.2f} GB; fit {t1 - t0:.0f} s")
    for name, lo, hi in (("until the first epoch ends", t0, ends[0]),
                         ("over epochs 2..", ends[0], ends[-1]),
                         ("after the last epoch", ends[-1], t1 + 1)):
        gb, at = peak(lo, hi)
        print(f"peak {name}: {gb:.2f} GB at {at:.1f} s")
    print(f"(epoch 1 ended at {ends[0] - t0:.1f} s, the last at {ends[-1] - t0:.1f} s)")

if __name__ == "__main__":
    main(sys.argv[1])
