"""Load test of ``recsys-metric serve``: latency and throughput under concurrent clients.

An ML-1M-sized model (6,040 users x 3,706 items, dim 64, about 1M liked pairs, exact index) is
built from synthetic tables by :func:`synthetic_model` (no training: random points in the unit
ball, random liked items) and saved to a temporary directory, or ``--model DIR`` is served
instead. ``recsys-metric serve`` runs in a subprocess on 127.0.0.1 (a free port); this process is
the client: ``--clients`` connections (HTTP/1.1 keep-alive, asyncio), each sending its next
request as soon as the previous answer is in (a closed loop), until ``--requests`` are done or
``--seconds`` have passed. Phases, after a warm-up:

- ``GET /health`` at ``--clients``: the HTTP stack alone (no model call), a floor;
- ``GET 1 client``: ``GET /recommend?user=<random known user>&k=10`` one at a time: the time of
  one request with no queue (the server's work plus the client's);
- ``GET`` at ``--clients``: the same request, the headline figures;
- ``mixed`` at ``--clients``: 80% of those, 10% ``POST /recommend`` folding in a new user of
  20 random items, 10% ``GET /similar?item=<random item>&k=10``.

Latencies are client-side, from writing the request to reading the whole answer. An error is a
status other than 200, an answer without its item list, or an exception. The CPU of the server
process (``/proc/PID/stat``), of this client and of every other process (``/proc/stat``) is
measured per phase: client and server share the machine's cores, and so does anyone else's work.

The client is a minimal raw HTTP/1.1 one by default (``--client raw``); ``--client httpx`` uses
``httpx.AsyncClient``, whose own CPU per request is several times the server's on a small
machine, so its latencies measure mostly the client (see ``results/serving_http.md``).

    python experiments/bench_http.py --out-dir experiments/results
    python experiments/bench_http.py --requests 2000 --seconds 5        # smoke

Progress goes to stderr; the last line printed is one JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from urllib.parse import quote

import numpy as np
import scipy.sparse as sp

from recsys_metric import IdMap, Recommender, TrainConfig

K = 10
TARGET_P99_MS = 20.0
FOLD_ITEMS = 20  # items of a folded-in user in the mixed phase
MIX = (0.8, 0.1, 0.1)  # GET /recommend, POST /recommend, GET /similar
NOTES = "## Notes"  # serving_http.md from this heading on is hand-written: a rerun keeps it


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the model ------------------------------------------------------------------------------------


def _ball(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` points uniform in the unit ball (as CML keeps its rows inside it)."""
    x = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x * rng.random((n, 1)) ** (1.0 / dim)).astype(np.float32)


def synthetic_model(n_users: int = 6040, n_items: int = 3706, dim: int = 64, per_user: int = 165,
                    seed: int = 0, index: str = "exact") -> Recommender:
    """A fitted-looking :class:`Recommender` without training, ML-1M-sized by default.

    Users and items are random points in the unit ball; user ``u`` likes a uniform random set
    of items, their number 20 plus a geometric draw of mean ``per_user - 20`` (ML-1M's users
    have at least 20 ratings, 165 on average), capped at half the catalogue. Ids are
    ``"1".."n"`` for both (as in ML-1M), every item is named ``"Item i"``; an exact index
    (or ``index``, built as ``fit`` builds it).
    """
    rng = np.random.default_rng(seed)
    users, items = _ball(rng, n_users, dim), _ball(rng, n_items, dim)
    low = min(20, n_items // 2)
    deg = np.minimum(low + rng.geometric(1.0 / max(per_user - low + 1, 1), n_users) - 1,
                     n_items // 2)
    rows = [np.sort(rng.choice(n_items, d, replace=False)) for d in deg]
    liked = sp.csr_matrix((np.ones(int(deg.sum()), np.float32), np.concatenate(rows),
                           np.r_[0, np.cumsum(deg)]), shape=(n_users, n_items))
    def ids(n: int) -> IdMap:
        return IdMap(np.array([str(i) for i in range(1, n + 1)], dtype=object))

    model = Recommender(TrainConfig(dim=dim), index=index)
    model._set_state(users, items, ids(n_users), ids(n_items), liked,
                     {str(i): f"Item {i}" for i in range(1, n_items + 1)})
    model._build_index()
    return model


# -- the server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int, timeout: float = 120.0, workers: int = 1
                 ) -> subprocess.Popen:
    """``recsys-metric serve model_dir`` on 127.0.0.1:port, returned once /health answers."""
    proc = subprocess.Popen([sys.executable, "-m", "recsys_metric.cli", "serve", str(model_dir),
                             "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    log(proc.stdout.readline().strip())
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not answer /health in {timeout:.0f} s")
        time.sleep(0.2)


# -- the load -------------------------------------------------------------------------------------


def plan(model: Recommender, n: int, mix: tuple[float, float, float], seed: int) -> list:
    """``n`` requests ``(method, path, body)``, drawn with ``mix`` shares of GET /recommend,
    POST /recommend and GET /similar."""
    rng = np.random.default_rng(seed)
    users, items = model.users_.ids, model.items_.ids
    kinds = rng.choice(3, n, p=mix)
    out = []
    for kind in kinds:
        if kind == 0:
            out.append(("GET", f"/recommend?user={quote(users[rng.integers(len(users))])}&k={K}",
                        None))
        elif kind == 1:
            basket = items[rng.choice(len(items), FOLD_ITEMS, replace=False)].tolist()
            out.append(("POST", "/recommend", json.dumps({"items": basket, "k": K}).encode()))
        else:
            out.append(("GET", f"/similar?item={quote(items[rng.integers(len(items))])}&k={K}",
                        None))
    return out


def _ok(status: int, body: bytes) -> bool:
    return status == 200 and (b'"items":[{' in body or body.startswith(b'{"status":"ok"'))


async def _raw_client(port: int, queue: list, stop: float, lat: list, errors: list) -> None:
    """One keep-alive connection speaking just enough HTTP/1.1: the server always sends a
    Content-Length (JSON answers), so an answer is its head and that many bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    try:
        while queue and time.perf_counter() < stop:
            method, path, body = queue.pop()
            req = f"{method} {path} HTTP/1.1\r\n".encode() + host
            if body is not None:
                req += (b"Content-Type: application/json\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
            else:
                req += b"\r\n"
            t0 = time.perf_counter()
            try:
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                at = head.lower().index(b"content-length:") + 15
                n = int(head[at:head.index(b"\r\n", at)])
                answer = await reader.readexactly(n)
                lat.append(time.perf_counter() - t0)
                if not _ok(int(head[9:12]), answer):
                    errors.append(f"{method} {path}: {head[:12]!r} {answer[:200]!r}")
            except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                lat.append(time.perf_counter() - t0)  # a failed request counts, as an error
                errors.append(f"{method} {path}: {type(e).__name__}: {e}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def _httpx_client(client, queue: list, stop: float, lat: list, errors: list) -> None:
    import httpx

    while queue and time.perf_counter() < stop:
        method, path, body = queue.pop()
        t0 = time.perf_counter()
        try:
            r = await client.request(method, path, content=body, headers=(
                {"Content-Type": "application/json"} if body is not None else None))
            lat.append(time.perf_counter() - t0)
            if not _ok(r.status_code, r.content):
                errors.append(f"{method} {path}: {r.status_code} {r.content[:200]!r}")
        except httpx.HTTPError as e:
            lat.append(time.perf_counter() - t0)
            errors.append(f"{method} {path}: {type(e).__name__}: {e}")


async def _load(port: int, requests: list, clients: int, seconds: float, kind: str
                ) -> tuple[list, list, float]:
    queue = list(reversed(requests))  # pop() from the end takes them in plan order
    lat: list = []
    errors: list = []
    t0 = time.perf_counter()
    stop = t0 + seconds
    if kind == "raw":
        await asyncio.gather(*(_raw_client(port, queue, stop, lat, errors)
                               for _ in range(clients)))
    else:
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                     timeout=30) as c:
            await asyncio.gather(*(_httpx_client(c, queue, stop, lat, errors)
                                   for _ in range(clients)))
    return lat, errors, time.perf_counter() - t0


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` and its live children (the
    worker processes of ``serve --workers``)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _busy() -> float:
    """CPU seconds every process of the machine has used since boot (``/proc/stat``)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def run_phase(name: str, port: int, server_pid: int | None, requests: list, clients: int,
              seconds: float, kind: str = "raw") -> dict:
    """One closed-loop run; latencies in ms and CPU per request (ms) of server and client."""
    cpu0 = _proc_cpu(server_pid) if server_pid else 0.0
    me0, busy0 = time.process_time(), _busy()
    lat, errors, wall = asyncio.run(_load(port, requests, clients, seconds, kind))
    server = _proc_cpu(server_pid) - cpu0 if server_pid else None  # not ours: unknown
    me, busy = time.process_time() - me0, _busy() - busy0
    n = len(lat)
    ms = np.asarray(lat) * 1e3 if lat else np.full(1, np.nan)
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    out = {"phase": name, "client": kind, "clients": clients, "requests": n,
           "errors": len(errors), "seconds": round(wall, 2), "rps": round(n / wall, 1),
           "p50_ms": round(float(p50), 2), "p90_ms": round(float(p90), 2),
           "p99_ms": round(float(p99), 2), "max_ms": round(float(ms.max()), 2),
           "server_cpu_ms_per_req": None if server is None else round(server / max(n, 1) * 1e3, 3),
           "client_cpu_ms_per_req": round(me / max(n, 1) * 1e3, 3),
           "others_cores": round(max(busy - (server or 0.0) - me, 0.0) / wall, 2)}
    for e in errors[:5]:
        log(f"  error: {e}")
    log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in out.items() if k != "phase"))
    return out


# -- report ---------------------------------------------------------------------------------------


COLUMNS = ("phase", "client", "clients", "requests", "errors", "rps", "p50_ms", "p90_ms",
           "p99_ms", "max_ms", "server_cpu_ms_per_req", "client_cpu_ms_per_req", "others_cores")


def _versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for p in ("starlette", "uvicorn", "httptools", "uvloop", "h11", "httpx", "torch", "numpy"):
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            out.append(f"{p} absent")
    return ", ".join(out)


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}"


def write_report(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serving_http.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# HTTP serving: `recsys-metric serve` under concurrent clients",
        "",
        f"Command: `{result['command']}` ({result['date']}).",
        "",
        f"Machine: {result['machine']}; {result['versions']}. The client and the server share "
        "these cores, and so does whatever else runs on the machine (`others_cores`: the cores "
        "other processes used during the phase). The server is one process, one event loop.",
        "",
        f"Model: {result['model']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("phase", "client") else "---:" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(str(p[c]) for c in COLUMNS) + " |" for p in result["phases"]]
    h = result["headline"]
    lines += ["", f"Target: p99 <= {TARGET_P99_MS:g} ms at {h['clients']} clients with no "
              f"error: **{'met' if h['met'] else 'missed'}** (p99 {h['p99_ms']} ms, "
              f"{h['errors']} errors).", "",
              "Latencies are client-side (ms). In a closed loop with C clients in flight, "
              "latency ~ C / throughput: each request waits behind the others, so while the "
              "server's one event loop is the bottleneck the median at 64 clients is about 64 x "
              "its CPU time per request, and p99 adds the scheduling noise of the shared "
              "cores.", ""]
    md = out_dir / "serving_http.md"
    old = md.read_text() if md.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""  # hand-written, kept across runs
    md.write_text("\n".join(lines) + "\n" + notes)


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", type=Path, help="serve this model directory (default: a synthetic "
                                              "ML-1M-sized one, saved to a temporary directory)")
    p.add_argument("--port", type=int, help="talk to a server already listening on "
                                            "127.0.0.1:PORT instead of starting one (its CPU "
                                            "is then not measured)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="serve --workers (default 1)")
    p.add_argument("--requests", type=int, default=20000, help="per phase (default 20000)")
    p.add_argument("--seconds", type=float, default=30.0, help="per phase (default 30)")
    p.add_argument("--warmup", type=int, default=2000, help="requests before the phases")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw")
    p.add_argument("--no-mixed", action="store_true", help="skip the mixed phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, help="write serving_http.md and .json there")
    args = p.parse_args(argv)

    tmp = None
    if args.model is None:
        t = time.perf_counter()
        model = synthetic_model(seed=args.seed)
        tmp = tempfile.TemporaryDirectory(prefix="bench_http_")
        model_dir = model.save(Path(tmp.name) / "model")
        log(f"synthetic model built and saved in {time.perf_counter() - t:.1f} s")
    else:
        model_dir, model = args.model, Recommender.load(args.model)
    about = (f"{len(model.users_):,} users x {len(model.items_):,} items, dim "
             f"{model.item_embeddings_.shape[1]}, {model.liked_.nnz:,} liked pairs, "
             f"{model.index_kind_} index"
             + ("" if args.model else f", synthetic (`synthetic_model(seed={args.seed})`)"))
    server = None
    port = args.port
    try:
        if port is None:
            port = free_port()
            server = start_server(model_dir, port, workers=args.workers)
        pid = server.pid if server else None
        # this process holds torch and the model too: without this, a full collection over
        # them stalls the client ~100 ms now and then, a latency that is not the server's
        gc.collect()
        gc.freeze()
        get = plan(model, args.warmup + 2 * args.requests, (1.0, 0.0, 0.0), args.seed)
        run_phase("warm-up", port, pid, get[:args.warmup], args.clients, args.seconds,
                  args.client)
        phases = [
            run_phase("GET /health", port, pid, [("GET", "/health", None)] * args.requests,
                      args.clients, args.seconds / 3, args.client),
            run_phase("GET 1 client", port, pid, get[args.warmup:args.warmup + args.requests // 4],
                      1, args.seconds / 3, args.client),
            run_phase("GET", port, pid, get[args.warmup + args.requests:], args.clients,
                      args.seconds, args.client)]
        if not args.no_mixed:
            phases.append(run_phase("mixed", port, pid, plan(model, args.requests, MIX,
                                                             args.seed + 1),
                                    args.clients, args.seconds, args.client))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()
    head = phases[2]
    met = head["errors"] == 0 and head["p99_ms"] <= TARGET_P99_MS
    headline = {"clients": head["clients"], "requests": head["requests"],
                "errors": head["errors"], "rps": head["rps"], "p50_ms": head["p50_ms"],
                "p99_ms": head["p99_ms"], "target_p99_ms": TARGET_P99_MS, "met": met,
                "server_cpu_ms_per_req": head["server_cpu_ms_per_req"],
                "others_cores": head["others_cores"]}
    result = {"command": "python " + shlex.join(["experiments/bench_http.py", *sys.argv[1:]]),
              "date": datetime.date.today().isoformat(), "machine": _machine(),
              "versions": _versions(), "model": about, "phases": phases, "headline": headline}
    if args.out_dir:
        write_report(args.out_dir, result)
    print(json.dumps(headline))
    return result


if __name__ == "__main__":
    main()
