"""HTTP serving of a fitted model (``recsys-metric serve MODEL``): a small Starlette app.

Routes (JSON in and out; the item lists are the ``recommend --json`` objects, made by
:func:`recsys_metric.recommender.items_json`, shared with the CLI):

- ``GET /health`` -> ``{"status": "ok", "model": {...}}``
- ``GET /recommend?user=ID&k=N[&explain=1][&keep_liked=1]`` -> ``{"user": "ID", "items": [...]}``;
  ``explain`` adds ``"because": [{"item", "distance", "name"?}, ...]`` to each item: the user's
  liked items nearest to it
- ``POST /recommend`` with ``{"items": [...], "k": N, "explain": false, "keep_liked": false}``:
  a user unseen in training, folded in from their items -> ``{"user": null, "items": [...]}``
- ``GET /similar?item=ID&k=N`` -> ``{"item": "ID", "items": [...]}``

``k`` defaults to 10 and must be an integer in 1..:data:`MAX_K`; a ``k`` above the items left
after filtering gives a shorter list, as ``recommend`` does. An unknown user or item id is a 404,
any other mistake (a missing, unknown or malformed parameter, a malformed body) a 400, each with
``{"error": "..."}``; nothing the client sends gives a 500 or a traceback.

The model calls run in the event loop, not in a thread pool: they hold the GIL, and handing
them to a thread cost 3-4x the server's CPU per request and tripled p99 under 64 clients on 2
cores. The ``GET /recommend`` requests that arrive together are scored together
(:class:`_Batcher`): one call for all of them costs little more than one call for one (about a
millisecond, most of it fixed cost), which under 64 clients cut the server's CPU per request
from 1.1 ms to 0.26 ms (``experiments/results/serving_http.md``, which also measures the rest
of this module's choices).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import __version__
from .data import UnknownIdError
from .recommender import Recommender, items_json

MAX_K = 1000  # longest list served: a guard on response size, far above any page of results
MAX_ITEMS = 10_000  # longest history a POST may fold in (the fold-in's cost grows with it)
# a flag given bare (``?explain``) is on, as on a command line
TRUE, FALSE = frozenset({"1", "true", "yes", ""}), frozenset({"0", "false", "no"})


# -- request parsing ------------------------------------------------------------------------------


def _bad(message: str) -> HTTPException:
    return HTTPException(400, message)


def _query(request: Request, required: str, flags: tuple[str, ...] = ()) -> dict:
    """The query parameters: ``required`` (an id), ``k`` and the boolean ``flags``; any other
    name is refused, so a misspelt one (``?kk=5``) is not silently ignored."""
    q = request.query_params
    unknown = sorted(set(q) - {required, "k", *flags})
    if unknown:
        raise _bad(f"unknown parameter {unknown[0]!r}; expected {required}, k"
                   + "".join(f", {f}" for f in flags))
    if not q.get(required, "").strip():
        raise _bad(f"missing parameter {required!r}")
    k = q.get("k", "10")
    try:
        k = int(k)
    except ValueError:
        pass  # _k names the bad text
    out = {required: q[required], "k": _k(k)}
    for f in flags:
        v = q.get(f)
        if v is not None and v.lower() not in TRUE | FALSE:
            raise _bad(f"parameter {f!r} must be 1/true/yes or 0/false/no, got {v!r}")
        out[f] = v is not None and v.lower() in TRUE
    return out


def _k(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_K:
        raise _bad(f"k must be an integer from 1 to {MAX_K}, got {value!r}")
    return value


async def _body(request: Request) -> dict:
    """The POST body: ``{"items": [ids...], "k"?, "explain"?, "keep_liked"?}``."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise _bad('the body must be a JSON object: {"items": [...], "k": 10}')
    unknown = sorted(set(body) - {"items", "k", "explain", "keep_liked"})
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}; expected items, k, explain, keep_liked")
    items = body.get("items")
    if (not isinstance(items, list) or not items or len(items) > MAX_ITEMS
            or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in items)):
        raise _bad(f"items must be a list of 1 to {MAX_ITEMS} item ids (strings or integers)")
    for f in ("explain", "keep_liked"):
        if not isinstance(body.get(f, False), bool):
            raise _bad(f"{f} must be true or false, got {body[f]!r}")
    return {"items": items, "k": _k(body.get("k", 10)), "explain": body.get("explain", False),
            "keep_liked": body.get("keep_liked", False)}


class _Batcher:
    """Scores the ``GET /recommend`` requests of one event-loop turn in one call.

    A request's handler queues ``(user, k, keep_liked)`` and awaits its future; the first one
    queued schedules :meth:`flush` with ``call_soon``, which runs after every handler that
    became ready in this turn, so requests read together are batched, and a lone request waits
    for nothing."""

    def __init__(self, model: Recommender) -> None:
        self.model = model
        self.pending: list = []

    async def recommend(self, user: str, k: int, keep_liked: bool):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((user, k, keep_liked, future))
        if len(self.pending) == 1:
            loop.call_soon(self.flush)
        return await future

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        for keep in (False, True):
            group = [r for r in batch if r[2] == keep]
            if not group:
                continue
            try:
                ids, scores = self.model.recommend([r[0] for r in group],
                                                   N=max(r[1] for r in group),
                                                   filter_already_liked_items=not keep)
            except Exception as e:  # noqa: BLE001 -- each waiting request gets the error
                for r in group:
                    if not r[3].done():
                        r[3].set_exception(e)
                continue
            for (_, k, _, future), row_ids, row_scores in zip(group, ids, scores, strict=True):
                if not future.done():  # its client may have gone
                    found = row_ids[:k] != ""
                    future.set_result((row_ids[:k][found], row_scores[:k][found]))


# -- the app -------------------------------------------------------------------------------------


def create_app(model: Recommender) -> Starlette:
    """The Starlette app serving ``model`` (fitted or loaded); see the module docstring."""
    cfg = model.config
    info = {"users": len(model.users_), "items": len(model.items_),
            "dim": int(model.item_embeddings_.shape[1]), "interactions": int(model.liked_.nnz),
            "index": model.index_kind_, "loss": cfg.loss, "distance": cfg.distance,
            "named_items": len(model.item_names_), "version": __version__,
            "fit_seconds": getattr(model, "fit_seconds_", None)}

    def because(user, ids, user_items=None) -> list:
        if user is not None:
            u = model.users_.index(user, "user")
            if model.liked_.indptr[u + 1] == model.liked_.indptr[u]:
                return [((), ())] * len(ids)  # no liked items: nothing to point at
        return [model.explain(user, i, user_items=user_items) for i in ids]

    batcher = _Batcher(model)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": info})

    async def recommend(request: Request) -> JSONResponse:
        if request.method == "POST":  # a new user, folded in from their items
            b = await _body(request)
            ids, scores = model.recommend(user_items=b["items"], N=b["k"],
                                          filter_already_liked_items=not b["keep_liked"])
            why = because(None, ids, b["items"]) if b["explain"] else None
            return JSONResponse({"user": None, "items": items_json(model, ids, scores, why)})
        q = _query(request, "user", ("explain", "keep_liked"))
        model.users_.index(q["user"], "user")  # an unknown id fails here, not in the batch
        ids, scores = await batcher.recommend(q["user"], q["k"], q["keep_liked"])
        why = because(q["user"], ids) if q["explain"] else None
        return JSONResponse({"user": q["user"], "items": items_json(model, ids, scores, why)})

    async def similar(request: Request) -> JSONResponse:
        q = _query(request, "item")
        ids, scores = model.similar_items(q["item"], N=q["k"])
        return JSONResponse({"item": q["item"], "items": items_json(model, ids, scores)})

    def error(status: int):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            if isinstance(exc, HTTPException):
                return JSONResponse({"error": exc.detail}, exc.status_code, exc.headers)
            # a ValueError is the model's word for a bad argument (as the CLI takes it); a bug
            # anywhere else is a 500 whose traceback goes to the server's log only
            return JSONResponse({"error": str(exc) if status < 500 else "internal error"},
                                status)
        return handler

    routes = [Route("/health", health), Route("/recommend", recommend, methods=["GET", "POST"]),
              Route("/similar", similar)]
    return Starlette(routes=routes, exception_handlers={
        HTTPException: error(400), UnknownIdError: error(404), ValueError: error(400),
        Exception: error(500)})


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1) -> None:
    """Load the model in ``model_dir`` and serve it on ``host:port`` until interrupted, in
    ``workers`` processes sharing the listening socket (each loads the model once; the Annoy
    file is memory-mapped, so they share its pages)."""
    import uvicorn

    model = Recommender.load(model_dir)  # here too: a damaged model fails before listening
    # Bind here, not in uvicorn: a busy port is then an OSError the CLI reports in one line.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
    # without it Nagle holds the body behind the headers for a delayed ACK (40 ms a request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until the loop runs
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    url = f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
    print(f"recsys-metric: serving {model_dir} ({len(model.users_)} users, "
          f"{len(model.items_)} items) on {url}"
          + (f" in {workers} processes" if workers > 1 else ""), flush=True)
    options = dict(log_level="warning", access_log=False)
    if workers == 1:
        config = uvicorn.Config(_ready(model), **options)
        uvicorn.Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    del model
    os.environ[_MODEL_ENV] = str(model_dir)  # the workers are spawned: they read it there
    config = uvicorn.Config(f"{__name__}:_worker_app", factory=True, workers=workers, **options)
    Multiprocess(config, sockets=[sock]).run()


_MODEL_ENV = "RECSYS_METRIC_SERVE_MODEL"


def _worker_app() -> Starlette:
    """A worker process's app: the model of :data:`_MODEL_ENV`, loaded once."""
    return _ready(Recommender.load(os.environ[_MODEL_ENV]))


def _ready(model: Recommender) -> Starlette:
    """The app of ``model``, this process readied to serve it."""
    import torch

    # One request batch is scored at a time (the event loop): torch's intra-op threads only
    # fight the server's own thread for the cores (2 threads on 2 cores: 2.4x the CPU per
    # request).
    torch.set_num_threads(1)
    app = create_app(model)
    # torch and the model leave a few 10^5 long-lived objects: a full collection scanning them
    # stalls every request in flight (~100 ms measured); frozen, collections skip them.
    gc.collect()
    gc.freeze()
    return app
