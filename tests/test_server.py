"""The HTTP server: every route against the model's own answers, every mistake a 4xx with
``{"error": ...}``, and one end-to-end run of ``recsys-metric serve``."""

import json
import signal
import socket
import subprocess
import sys
import time
import warnings

import httpx
import numpy as np
import pytest

with warnings.catch_warnings():  # starlette 1.x asks for httpx2 over httpx: the same API here
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

from recsys_metric import Recommender, TrainConfig, __version__
from recsys_metric.server import MAX_K, create_app, items_json

from .conftest import checkerboard
from .test_recommender import FAST

NAMES = {"i0": "Zero", "i3": "Three", "i12": "Twelve"}


@pytest.fixture(scope="module")
def model():
    m = Recommender(TrainConfig(**FAST), index="exact").fit(checkerboard(40, 20, density=0.7),
                                                           show_progress=False)
    m.item_names_ = dict(NAMES)
    return m


@pytest.fixture(scope="module")
def client(model):
    # raise_server_exceptions=False: a bug must show as the 500 a client would see
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        yield c


def expected(model, ids, scores) -> list[dict]:
    """The reference serialisation, written out independently of items_json."""
    out = []
    for i, s in zip(ids, scores, strict=True):
        it = {"item": str(i), "score": float(s)}
        if str(i) in NAMES:
            it["name"] = NAMES[str(i)]
        out.append(it)
    return out


def test_health(client, model):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model"]["users"] == 40
    assert body["model"]["items"] == 20 and body["model"]["dim"] == FAST["dim"]
    assert body["model"]["index"] == "exact" and body["model"]["version"] == __version__


@pytest.mark.parametrize("k", [1, 5, 10])
def test_get_recommend_equals_model(client, model, k):
    for user in ("u0", "u1", "u7"):
        r = client.get("/recommend", params={"user": user, "k": k})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        ids, scores = model.recommend(user, N=k)
        assert r.json() == {"user": user, "items": expected(model, ids, scores)}


def test_get_recommend_default_k_keep_liked_and_short_lists(client, model):
    assert len(client.get("/recommend?user=u0").json()["items"]) == 10
    r = client.get("/recommend?user=u0&k=20&keep_liked=1").json()
    ids, scores = model.recommend("u0", N=20, filter_already_liked_items=False)
    assert r["items"] == expected(model, ids, scores) and len(ids) == 20
    # k above what is left after filtering: a shorter list, as recommend gives
    left = len(model.recommend("u0", N=MAX_K)[0])
    assert len(client.get(f"/recommend?user=u0&k={MAX_K}").json()["items"]) == left < 20


def test_explain_points_at_liked_items(client, model):
    liked = set(model.items_.raw(model.liked_[model.users_.index("u2")].indices))
    r = client.get("/recommend", params={"user": "u2", "k": 4, "explain": "1"}).json()
    assert len(r["items"]) == 4
    for it in r["items"]:
        because = it["because"]
        assert 1 <= len(because) <= 3 and {b["item"] for b in because} <= liked
        dist = [b["distance"] for b in because]
        assert dist == sorted(dist)
        b_ids, b_d = model.explain("u2", it["item"])
        assert [b["item"] for b in because] == list(b_ids)
        assert np.allclose(dist, b_d)
        assert all(b.get("name") == NAMES.get(b["item"]) for b in because)
    assert client.get("/recommend?user=u2&k=4&explain").json() == r  # a bare flag is on
    plain = client.get("/recommend?user=u2&k=4&explain=0").json()
    assert [{k: v for k, v in it.items() if k != "because"} for it in r["items"]] == plain["items"]


def test_explain_for_a_user_without_liked_items():
    m = Recommender(TrainConfig(**FAST), index="exact").fit(checkerboard(10, 20),
                                                           show_progress=False)
    m.partial_fit_users(["empty"], [[]])
    with TestClient(create_app(m)) as c:
        r = c.get("/recommend?user=empty&k=3&explain=1")
    assert r.status_code == 200
    assert [it["because"] for it in r.json()["items"]] == [[], [], []]


def test_post_fold_in_equals_model(client, model):
    items = ["i0", "i3", "i5"]
    r = client.post("/recommend", json={"items": items, "k": 6})
    assert r.status_code == 200
    ids, scores = model.recommend(user_items=items, N=6)
    assert r.json() == {"user": None, "items": expected(model, ids, scores)}
    assert not set(items) & {it["item"] for it in r.json()["items"]}
    # explain points at the given items
    r = client.post("/recommend", json={"items": items, "k": 3, "explain": True}).json()
    assert [it["item"] for it in r["items"]] == list(ids[:3])
    assert all({b["item"] for b in it["because"]} <= set(items) for it in r["items"])
    kept = client.post("/recommend", json={"items": items, "k": 20, "keep_liked": True}).json()
    assert set(items) <= {it["item"] for it in kept["items"]}


def test_similar_equals_model(client, model):
    r = client.get("/similar?item=i3&k=5")
    assert r.status_code == 200
    ids, scores = model.similar_items("i3", N=5)
    assert r.json() == {"item": "i3", "items": expected(model, ids, scores)}


def test_items_json_is_the_cli_shape(model):
    ids, scores = model.recommend("u1", N=3)
    assert items_json(model, ids, scores) == expected(model, ids, scores)
    why = [(np.array(["i0", "i4"]), np.array([0.5, 1.0], np.float32))] * 3
    out = items_json(model, ids, scores, because=why)
    assert out[0]["because"] == [{"item": "i0", "distance": 0.5, "name": "Zero"},
                                 {"item": "i4", "distance": 1.0}]
    json.dumps(out, allow_nan=False)  # plain Python types only


@pytest.mark.parametrize("method, url, body, status, says", [
    ("GET", "/recommend?user=ghost", None, 404, "unknown user id 'ghost'"),
    ("GET", "/similar?item=nope", None, 404, "unknown item id 'nope'"),
    ("POST", "/recommend", {"items": ["i0", "nope"]}, 404, "unknown item id 'nope'"),
    ("GET", "/recommend", None, 400, "missing parameter 'user'"),
    ("GET", "/recommend?user=", None, 400, "missing parameter 'user'"),
    ("GET", "/similar?k=3", None, 400, "missing parameter 'item'"),
    ("GET", "/recommend?user=u0&k=0", None, 400, "k must be an integer"),
    ("GET", "/recommend?user=u0&k=-3", None, 400, "k must be an integer"),
    ("GET", "/recommend?user=u0&k=ten", None, 400, "k must be an integer"),
    ("GET", "/recommend?user=u0&k=2.5", None, 400, "k must be an integer"),
    ("GET", "/recommend?user=u0&k=%C2%B2", None, 400, "k must be an integer"),
    ("GET", f"/recommend?user=u0&k={MAX_K + 1}", None, 400, f"from 1 to {MAX_K}"),
    ("GET", "/similar?item=i0&k=99999999999999999999", None, 400, "k must be an integer"),
    ("GET", "/recommend?user=u0&explain=maybe", None, 400, "'explain' must be"),
    ("GET", "/recommend?user=u0&kk=5", None, 400, "unknown parameter 'kk'"),
    ("POST", "/recommend", b"{not json", 400, "malformed JSON body"),
    ("POST", "/recommend", b"\xff\xfe", 400, "malformed JSON body"),
    ("POST", "/recommend", b"", 400, "malformed JSON body"),
    ("POST", "/recommend", [1, 2], 400, "must be a JSON object"),
    ("POST", "/recommend", {"k": 3}, 400, "items must be a list"),
    ("POST", "/recommend", {"items": []}, 400, "items must be a list"),
    ("POST", "/recommend", {"items": "i0"}, 400, "items must be a list"),
    ("POST", "/recommend", {"items": ["i0", None]}, 400, "items must be a list"),
    ("POST", "/recommend", {"items": ["i0", 1.5]}, 400, "items must be a list"),
    ("POST", "/recommend", {"items": [True]}, 400, "items must be a list"),
    ("POST", "/recommend", {"items": [["i0"]]}, 400, "items must be a list"),
    ("POST", "/recommend", {"items": ["i0"], "k": "5"}, 400, "k must be an integer"),
    ("POST", "/recommend", {"items": ["i0"], "k": True}, 400, "k must be an integer"),
    ("POST", "/recommend", {"items": ["i0"], "k": 0}, 400, "k must be an integer"),
    ("POST", "/recommend", {"items": ["i0"], "explain": "yes"}, 400, "explain must be"),
    ("POST", "/recommend", {"items": ["i0"], "user": "u0"}, 400, "unknown field 'user'"),
    ("GET", "/nowhere", None, 404, "Not Found"),
    ("DELETE", "/recommend?user=u0", None, 405, "Method Not Allowed"),
    ("POST", "/similar", {"item": "i0"}, 405, "Method Not Allowed"),
])
def test_mistakes_are_4xx_with_an_error(client, method, url, body, status, says):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.request(method, url, **({} if body is None else kw))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error"} and says in r.json()["error"], r.json()


def test_a_bug_is_a_500_without_traceback(model, monkeypatch):
    monkeypatch.setattr(model, "similar_items", lambda *a, **k: 1 / 0)
    with TestClient(create_app(model), raise_server_exceptions=False) as c:
        r = c.get("/similar?item=i0")
    assert r.status_code == 500 and r.json() == {"error": "internal error"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_end_to_end(tmp_path, model, workers):
    model.save(tmp_path / "m")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recsys_metric.cli", "serve",
                             str(tmp_path / "m"), "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up in 60 s"
            time.sleep(0.2)
        with httpx.Client(base_url=url) as c:  # one keep-alive connection
            r = c.get("/recommend", params={"user": "u3", "k": 5})
            ids, scores = model.recommend("u3", N=5)
            assert r.json() == {"user": "u3", "items": expected(model, ids, scores)}
            # Without TCP_NODELAY every answer waits ~40 ms for a delayed ACK (Nagle holds the
            # body behind the headers); a request on a live connection takes ~1 ms.
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                times.append(time.perf_counter() - t0)
            assert sorted(times)[3] < 0.035, times
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert f"on {url}" in out and "Traceback" not in err


def test_serve_busy_port_is_one_line(tmp_path, model):
    model.save(tmp_path / "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "recsys_metric.cli", "serve",
                            str(tmp_path / "m"), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(model):
    """Requests arriving together are scored in one call (the batcher): each still gets its own
    user's list at its own k, and an unknown id among them fails alone."""
    import asyncio

    from recsys_metric import server

    calls = []
    real = model.recommend

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("user"))
        return real(*args, **kwargs)

    asks = [(f"u{i % 40}", 1 + i % 7, i % 3 == 0) for i in range(30)]

    async def go():
        transport = httpx.ASGITransport(app=server.create_app(model))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            gets = [c.get("/recommend", params={"user": u, "k": k,
                                                **({"keep_liked": 1} if keep else {})})
                    for u, k, keep in asks]
            return await asyncio.gather(*gets, c.get("/recommend", params={"user": "ghost"}))

    model.recommend = counting
    try:
        answers = asyncio.run(go())
    finally:
        model.recommend = real
    assert answers[-1].status_code == 404
    for (u, k, keep), r in zip(asks, answers, strict=False):
        ids, scores = model.recommend(u, N=k, filter_already_liked_items=not keep)
        got = r.json()
        assert r.status_code == 200 and got["user"] == u
        assert [i["item"] for i in got["items"]] == list(ids)  # scores: batch rounding aside
        assert np.allclose([i["score"] for i in got["items"]], scores, atol=1e-6)
    assert len(calls) < len(asks) / 2  # batched: far fewer model calls than requests
