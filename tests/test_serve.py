"""`alphafactory serve`: the real server (uvicorn, in a subprocess, on a free loopback port) called
with an HTTP client: every endpoint, forecasts equal to predict()'s, bad requests answered with a
4xx naming the problem, the predictions table with its lineage, the bearer token, and reloads
under traffic that fail no request. Plus the lineage itself: target timestamps and the in-place
migration of a predictions table written before lineage existed."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from alphafactory import cli
from alphafactory.blend import BlendConfig, Stacker
from alphafactory.data.frequency import FrequencyInfo
from alphafactory.errors import InputError
from alphafactory.serving.bundle import build_bundle
from alphafactory.serving.db import read_predictions, write_predictions
from alphafactory.serving.inference import (
    FORECAST_KEYS,
    LINEAGE,
    list_models,
    load_bundle,
    model_info,
    predict,
    target_timestamps,
)
from alphafactory.train import fit_models
from conftest import random_bars, small_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
HORIZONS = (1, 5)
NEURAL = {"lookback": 8, "trainer": {"epochs": 1, "batch_size": 128}}
ONNX_RTOL = 1e-6  # ONNX Runtime across two processes: float32 kernels (docs/serve.md); trees, linear: exact
EXACT = ["lightgbm", "ridge", "logistic"]


def _build(root: Path, bars: pd.DataFrame, families, *, scope: str = "pooled", seed: int = 0,
           task: str = "regression") -> Path:
    """A bundle of ``families`` ((family, names, extra) triples) trained on ``bars`` as the
    pipeline's stages would (features, labels, split, fit, stack, bundle)."""
    freq, features, label, labels, ds = small_dataset(bars, HORIZONS)
    fast = {"lightgbm": {"n_estimators": 20, "min_child_samples": 10, "early_stopping_rounds": 5}}
    results = []
    for family, names, extra in families:
        results += fit_models(ds, names, fast, root / "models" / family, seed=seed, extra=extra, scope=scope,
                              task=task)
    preds = pd.concat([r.predictions for r in results], ignore_index=True)
    Stacker(BlendConfig(), [r.name for r in results], HORIZONS).fit(preds, labels).save(root / "models" / "blend")
    info = {"frequency": freq.to_dict(), "symbols": sorted(bars["symbol"].unique()), "rows": len(bars),
            "start": str(bars["timestamp"].min()), "end": str(bars["timestamp"].max()), "source": "test"}
    build_bundle([root / "models" / f for f, _, _ in families], root / "models" / "blend", root / "bundle",
                 features=features, label=label, lookback=NEURAL["lookback"], info=info)
    return root / "bundle"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """``a``: lightgbm, ridge and an LSTM (ONNX); ``b``: lightgbm and ridge of another seed;
    ``per_symbol``: ridge per symbol; ``classification``: lightgbm and logistic classifiers. All on
    one random 3-symbol panel (``bars``, parquet)."""
    root = tmp_path_factory.mktemp("serve")
    bars = random_bars(n_symbols=3, n_bars=420)
    bars.to_parquet(root / "bars.parquet")
    trees = [("boosting", ("lightgbm",), None), ("classical", ("ridge",), None)]
    return {
        "bars": root / "bars.parquet",
        "a": _build(root / "a", bars, [*trees, ("neural", ("lstm",), NEURAL)]),
        "b": _build(root / "b", bars, trees, seed=1),
        "per_symbol": _build(root / "p", bars, [("classical", ("ridge",), None)], scope="per_symbol"),
        "classification": _build(root / "c", bars, [("boosting", ("lightgbm",), None),
                                                    ("classical", ("logistic",), None)], task="classification"),
    }


@pytest.fixture(scope="module")
def bars(bundles) -> pd.DataFrame:
    return pd.read_parquet(bundles["bars"])


@contextmanager
def serving(models: Path, tmp_path: Path, *extra: str):
    """``alphafactory serve --port 0`` in a subprocess; yields (client, server log path). The
    server's log goes to a file (a pipe would fill with access-log lines and block it)."""
    log_path = tmp_path / f"serve-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "alphafactory.cli", "serve", "--models", str(models),
                                 "--port", "0", *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None:
            assert proc.poll() is None, f"server exited {proc.returncode}: {log_path.read_text()}"
            assert time.monotonic() < deadline, log_path.read_text()
            for line in log_path.read_text().splitlines():
                if "on http://127.0.0.1:" in line:
                    port = int(line.rsplit(":", 1)[1])
            time.sleep(0.05)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        # No retry: the socket listens before the "on http://" line is logged, so a client that
        # connects at once waits in the backlog (it was refused while uvicorn started, before).
        assert client.get("/readyz").status_code in (200, 401), log_path.read_text()
        client.proc = proc  # type: ignore[attr-defined]
        yield client, log_path
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _json_records(df: pd.DataFrame) -> list[dict]:
    """Bar records with every float exact (json.dumps writes repr: it round-trips float64)."""
    return df.assign(timestamp=df["timestamp"].astype(str)).to_dict("records")


def _from_json(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    for c in ("timestamp", "target_timestamp"):
        out[c] = pd.to_datetime(out[c])
    return out


def _assert_same_forecasts(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Keys, lineage, tree and linear components to the last bit; the rest within ONNX_RTOL."""
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got[FORECAST_KEYS + LINEAGE], want[FORECAST_KEYS + LINEAGE], check_dtype=False)
    exact = [c for c in EXACT if c in want.columns]
    assert exact and (got[exact].to_numpy() == want[exact].to_numpy()).all()
    rest = [c for c in want.columns if c not in FORECAST_KEYS + LINEAGE + exact]
    np.testing.assert_allclose(got[rest].to_numpy(float), want[rest].to_numpy(float), rtol=ONNX_RTOL, atol=0)


def test_endpoints_and_forecasts_equal_predict(bundles, bars, tmp_path):
    bundle = load_bundle(bundles["a"])
    want = predict(bars, bundle)
    with serving(bundles["a"], tmp_path) as (c, log_path):
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready", "bundle_sha256": bundle.digest, "bundle_version": 2}
        info = c.get("/v1/model").json()
        assert info == json.loads(json.dumps({**model_info(bundle), "components": list_models(bundle)}))
        assert info["data"]["start"] == str(bars["timestamp"].min()) and info["data"]["source"] == "test"
        schema = c.get("/openapi.json").json()["paths"]
        assert {"/v1/forecast", "/v1/forecasts", "/v1/reload", "/v1/model", "/metrics", "/readyz"} <= set(schema)
        assert set(schema["/v1/forecast"]["post"]["requestBody"]["content"]) == {
            "application/json", "text/csv", "application/vnd.apache.parquet"}

        # The same bars three ways in; the very numbers of predict() out.
        for body in ({"content": _parquet(bars), "headers": {"content-type": "application/vnd.apache.parquet"}},
                     {"content": bars.to_csv(index=False).encode(), "headers": {"content-type": "text/csv"}},
                     {"json": _json_records(bars)}):
            r = c.post("/v1/forecast", params={"components": "true"}, **body)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["bundle_sha256"] == bundle.digest and doc["rows"] == len(want) == 3 * len(HORIZONS)
            _assert_same_forecasts(_from_json(doc["forecasts"]), want)
        # Without components: the headline columns only; as parquet when asked for.
        r = c.post("/v1/forecast", content=_parquet(bars), headers={"content-type": "application/vnd.apache.parquet"})
        assert [k for k in r.json()["forecasts"][0]] == FORECAST_KEYS + LINEAGE + ["yhat", "yhat_std", "prob_up"]
        r = c.post("/v1/forecast", params={"components": "1", "asof": "2020-12-31"}, content=_parquet(bars),
                   headers={"content-type": "application/vnd.apache.parquet", "accept": "application/vnd.apache.parquet"})
        assert r.headers["content-type"] == "application/vnd.apache.parquet"
        _assert_same_forecasts(pd.read_parquet(io.BytesIO(r.content)), predict(bars, bundle, asof="2020-12-31"))
        # An object body carries its options.
        r = c.post("/v1/forecast", json={"bars": _json_records(bars), "asof": "2020-12-31"})
        assert set(r.json()["forecasts"][0]) == set(FORECAST_KEYS + LINEAGE + ["yhat", "yhat_std", "prob_up"])
        assert {f["timestamp"] for f in r.json()["forecasts"]} == {"2020-12-31T00:00:00"}

        metrics = c.get("/metrics").text
        assert 'alphafactory_http_requests_total{method="POST",route="/v1/forecast",status="200"} 6' in metrics
        assert 'alphafactory_http_request_duration_seconds_count{route="/v1/forecast"} 6' in metrics
        assert f'alphafactory_bundle_info{{sha256="{bundle.digest}",version="2"}} 1' in metrics
    access = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith('{"ts"')]
    assert [a["path"] for a in access[:3]] == ["/readyz", "/healthz", "/readyz"]
    assert {"client", "method", "status", "ms", "bytes_out", "bundle"} <= set(access[-1])


def test_a_classification_bundle_serves_class_probabilities(bundles, bars, tmp_path):
    want = predict(bars, load_bundle(bundles["classification"]))
    assert {"p_short", "p_neutral", "p_long"} <= set(want.columns)
    with serving(bundles["classification"], tmp_path) as (c, _):
        r = c.post("/v1/forecast", params={"components": "true"}, json=_json_records(bars))
        assert r.status_code == 200, r.text
        _assert_same_forecasts(_from_json(r.json()["forecasts"]), want)
        heads = list(c.post("/v1/forecast", json=_json_records(bars)).json()["forecasts"][0])
    assert heads == FORECAST_KEYS + LINEAGE + ["yhat", "yhat_std", "prob_up", "p_short", "p_neutral", "p_long"]


def _message(fn) -> str:
    with pytest.raises(InputError) as e:
        fn()
    return str(e.value)


def test_kept_alive_answers_do_not_wait_for_a_delayed_ack(bundles, tmp_path):
    """The server's connections have TCP_NODELAY: without it, every answer after the first on a
    kept-alive connection waited for the client's delayed ACK (>= 40 ms on Linux; GET /healthz
    took 44 ms instead of under 1 ms). Even on a loaded machine some of 10 answers come faster."""
    with serving(bundles["a"], tmp_path) as (client, _):
        times = []
        for _ in range(10):  # one connection: httpx keeps it alive
            t0 = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            times.append(time.perf_counter() - t0)
    assert min(times[1:]) < 0.030, [round(t * 1e3, 1) for t in times]


def test_bad_requests_get_a_4xx_that_names_the_problem(bundles, bars, tmp_path):
    bundle = load_bundle(bundles["a"])
    short = bars.groupby("symbol").tail(20)
    pq = {"content-type": "application/vnd.apache.parquet"}
    with serving(bundles["a"], tmp_path, "--max-body-mb", "0.5", "--max-rows", "1300") as (c, _):
        cases = [  # (request, status, the error: the CLI's message where the CLI has one)
            (dict(content=_parquet(bars.drop(columns="volume")), headers=pq), 422,
             _message(lambda: predict(bars.drop(columns="volume"), bundle))),
            (dict(content=_parquet(short), headers=pq), 422, _message(lambda: predict(short, bundle))),
            (dict(content=_parquet(bars), headers=pq, params={"asof": "yesterday"}), 422,
             _message(lambda: predict(bars, bundle, asof="yesterday"))),
            (dict(content=b'[{"symbol": "A", ', headers={"content-type": "application/json"}), 400, "body: not valid JSON"),
            (dict(json={"rows": []}), 422, "body: JSON object keys ['rows']; expected 'bars'"),
            (dict(json=[1, 2]), 422, "body: expected a JSON array of bar records"),
            (dict(content=b"not parquet", headers=pq), 400, "body: not a parquet file"),
            (dict(content=b"a,b\n1,2\n", headers={"content-type": "text/csv"}), 422, "bars is missing column(s)"),
            (dict(content=b"x", headers={"content-type": "image/png"}), 415, "Content-Type 'image/png' is not supported"),
            (dict(content=b"x" * 600_000, headers=pq), 413, "body: 600000 bytes, more than the limit of 524288 bytes"),
            (dict(content=_parquet(pd.concat([bars, bars.head(41)])), headers=pq), 413,
             "body: 1301 bars, more than the limit of 1300"),
            (dict(content=_parquet(bars), headers=pq, params={"components": "maybe"}), 422,
             "components: got 'maybe', expected true or false"),
        ]
        for req, status, message in cases:
            r = c.post("/v1/forecast", **req)
            assert r.status_code == status and message in r.json()["error"], (req.get("params"), r.status_code, r.text)
        # A streamed body without Content-Length is cut off at the limit too.
        r = c.post("/v1/forecast", content=iter([b"x" * 300_000] * 2), headers=pq)
        assert r.status_code == 413 and "more than the limit of 524288 bytes" in r.json()["error"]
        assert c.get("/v1/forecasts").status_code == 404  # no --db
        assert c.get("/nope").json() == {"error": "Not Found"}
        assert c.get("/v1/forecast").status_code == 405
        assert c.post("/v1/reload", content=b"{").status_code == 400
        metrics = c.get("/metrics").text
        assert 'alphafactory_http_errors_total{route="/v1/forecast",kind="client"} 14' in metrics
        assert 'kind="server"' not in metrics
    with serving(bundles["per_symbol"], tmp_path) as (c, _):
        other = bars.assign(symbol=bars["symbol"].replace({bars["symbol"].iloc[0]: "NEW"}))
        r = c.post("/v1/forecast", content=_parquet(other), headers=pq)
        assert r.status_code == 422
        assert r.json()["error"] == _message(lambda: predict(other, load_bundle(bundles["per_symbol"])))
        assert "have no model 'ridge', which was trained per symbol" in r.json()["error"]


def test_forecasts_are_stored_with_their_lineage_and_read_back(bundles, bars, tmp_path):
    url = f"sqlite:///{tmp_path / 'preds.db'}"
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    bundle = load_bundle(bundles["b"])
    pq = {"content-type": "application/vnd.apache.parquet"}
    with serving(bundles["b"], tmp_path, "--db", url, "--token-file", str(token)) as (c, _):
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
        for path in ("/v1/model", "/metrics", "/v1/forecasts"):
            assert c.get(path).status_code == 401
        assert c.get("/v1/model", headers={"authorization": "Bearer wrong"}).status_code == 401
        c.headers["authorization"] = "Bearer s3cret"
        for at in ("2020-12-30", "2020-12-31"):
            assert c.post("/v1/forecast", params={"asof": at, "components": "true"}, content=_parquet(bars),
                          headers=pq).status_code == 200
        assert c.post("/v1/forecast", params={"asof": "2020-12-29", "store": "false"}, content=_parquet(bars),
                      headers=pq).status_code == 200
        sym = sorted(bars["symbol"].unique())[1]
        r = c.get("/v1/forecasts", params={"symbol": sym, "since": "2020-12-31"})
        assert r.status_code == 200, r.text
        got = _from_json(r.json()["forecasts"])
        want = predict(bars, bundle, asof="2020-12-31")
        want = want[want["symbol"] == sym].reset_index(drop=True)
        assert len(got) == len(HORIZONS)
        pd.testing.assert_frame_equal(got[FORECAST_KEYS + LINEAGE], want[FORECAST_KEYS + LINEAGE], check_dtype=False)
        assert (got[["yhat", "lightgbm"]].to_numpy() == want[["yhat", "lightgbm"]].to_numpy()).all()
        assert r.json()["rows"] == len(HORIZONS)
        assert c.get("/v1/forecasts", params={"since": "last tuesday"}).status_code == 422
        assert c.get("/v1/forecasts", params={"limit": 0}).status_code == 422
    table = read_predictions(url)
    assert len(table) == 2 * 3 * len(HORIZONS)  # two stored cuts; store=false wrote nothing
    assert (table["bundle_sha256"] == bundle.digest).all() and (table["bundle_version"] == 2).all()


def test_a_database_that_fails_is_a_503_not_a_traceback(bundles, bars, tmp_path):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    with serving(bundles["b"], tmp_path, "--db", url) as (c, _):
        r = c.post("/v1/forecast", content=_parquet(bars), headers={"content-type": "application/vnd.apache.parquet"})
        assert r.status_code == 503 and "predictions table 'preds': write failed (unable to open" in r.json()["error"]
        r = c.get("/v1/forecasts")
        assert r.status_code == 503 and "read failed (unable to open" in r.json()["error"]
        r = c.post("/v1/forecast", params={"store": "false"}, content=_parquet(bars),
                   headers={"content-type": "application/vnd.apache.parquet"})
        assert r.status_code == 200


@pytest.mark.slow
def test_reload_under_traffic_fails_no_request(bundles, bars, tmp_path):
    """Eight clients forecast without pause while the bundle is swapped a -> b -> a by
    POST /v1/reload and by SIGHUP, and a tampered bundle is refused: every request succeeds, each
    answered by one whole bundle, and the old bundle keeps serving after the refusal."""
    a, b = load_bundle(bundles["a"]).digest, load_bundle(bundles["b"]).digest
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["b"], tampered)
    (tampered / "bundle.json").write_text((tampered / "bundle.json").read_text().replace('"lookback": 8', '"lookback": 9'))
    live = tmp_path / "live"  # the path SIGHUP reloads: a symlink swapped between the two bundles
    live.symlink_to(bundles["a"])
    body = _parquet(bars)
    statuses: list[int] = []
    seen: set[str] = set()
    failures: list[str] = []
    stop = threading.Event()
    with serving(live, tmp_path) as (c, log_path):
        port = c.base_url.port

        def client() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as h:
                while not stop.is_set():
                    try:
                        r = h.post("/v1/forecast", content=body, headers={"content-type": "application/vnd.apache.parquet"})
                    except httpx.HTTPError as e:  # a dropped connection is a failed request too
                        failures.append(repr(e))
                        continue
                    statuses.append(r.status_code)
                    if r.status_code != 200:
                        failures.append(r.text)
                        continue
                    doc = r.json()
                    if {f["bundle_sha256"] for f in doc["forecasts"]} != {doc["bundle_sha256"]}:
                        failures.append(f"rows of several bundles in one answer: {doc['bundle_sha256']}")
                    seen.add(doc["bundle_sha256"])

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            r = c.post("/v1/reload", json={"models": str(bundles["b"])})
            assert r.status_code == 200 and r.json()["bundle_sha256"] == b and r.json()["previous_sha256"] == a
            time.sleep(1.0)
            r = c.post("/v1/reload", json={"models": str(tampered)})
            assert r.status_code == 422 and "reload refused, still serving" in r.json()["error"], r.text
            assert "bundle.json" in r.json()["error"] and c.get("/readyz").json()["bundle_sha256"] == b
            time.sleep(0.5)
            assert c.post("/v1/reload", json={"models": str(live)}).json()["bundle_sha256"] == a
            live.unlink()
            live.symlink_to(bundles["b"])
            c.proc.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]
            deadline = time.monotonic() + 30
            while c.get("/readyz").json()["bundle_sha256"] != b:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
        metrics = c.get("/metrics").text
    assert not failures, failures[:3]
    assert len(statuses) > 16 and set(statuses) == {200}, sorted(set(statuses))
    assert seen == {a, b}
    assert 'alphafactory_bundle_reloads_total{result="ok"} 3' in metrics
    assert 'alphafactory_bundle_reloads_total{result="refused"} 1' in metrics


def _per_worker(port: int, tries: int = 40) -> dict[str, str]:
    """{worker pid: bundle sha256} read from /metrics over fresh connections (each one goes to
    whichever worker the kernel hands it; 40 tries reach both of two workers in practice)."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"connection": "close"}).text
        pid = text.split('alphafactory_worker_info{worker="', 1)[1].split('pid="', 1)[1].split('"', 1)[0]
        seen[pid] = text.split('alphafactory_bundle_info{sha256="', 1)[1].split('"', 1)[0]
    return seen


def test_workers_share_the_port_and_reload_together(bundles, bars, tmp_path):
    """--workers 2: two processes answer on one port with predict()'s forecasts; POST /v1/reload
    (on one of them) and SIGHUP (to the supervisor) swap the bundle in both; a tampered bundle is
    refused by the first and reaches neither; a worker that dies is replaced."""
    a, b = load_bundle(bundles["a"]).digest, load_bundle(bundles["b"]).digest
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["b"], tampered)
    (tampered / "bundle.json").write_text((tampered / "bundle.json").read_text().replace('"lookback": 8', '"lookback": 9'))
    live = tmp_path / "live"
    live.symlink_to(bundles["a"])
    want = predict(bars, load_bundle(bundles["a"]))
    with serving(live, tmp_path, "--workers", "2") as (c, log_path):
        port = c.base_url.port
        seen = _per_worker(port)
        assert len(seen) == 2 and set(seen.values()) == {a}, seen
        for _ in range(4):  # fresh connections: both workers forecast
            r = httpx.post(f"http://127.0.0.1:{port}/v1/forecast", params={"components": "true"}, content=_parquet(bars),
                           headers={"content-type": "application/vnd.apache.parquet", "connection": "close"})
            assert r.status_code == 200, r.text
            _assert_same_forecasts(_from_json(r.json()["forecasts"]), want)

        r = c.post("/v1/reload", json={"models": str(bundles["b"])})
        assert r.status_code == 200 and r.json()["workers"] == 2, r.text
        assert r.json()["bundle_sha256"] == b and r.json()["previous_sha256"] == a
        assert set(_per_worker(port).values()) == {b}
        r = c.post("/v1/reload", json={"models": str(tampered)})
        assert r.status_code == 422 and "reload refused, still serving" in r.json()["error"], r.text
        assert set(_per_worker(port).values()) == {b}

        assert c.post("/v1/reload", json={"models": str(live)}).json()["bundle_sha256"] == a
        live.unlink()
        live.symlink_to(bundles["b"])
        c.proc.send_signal(signal.SIGHUP)  # type: ignore[attr-defined]  # the supervisor
        deadline = time.monotonic() + 60
        while set(_per_worker(port, 10).values()) != {b}:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)

        victim = next(iter(seen))
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # a new worker takes its place, with the bundle serving now
            assert time.monotonic() < deadline, log_path.read_text()
            now = _per_worker(port, 10)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        assert set(now.values()) == {b}
    assert "exited with status -9; starting another" in log_path.read_text()


def test_workers_refuse_a_bad_bundle_before_listening(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-m", "alphafactory.cli", "serve", "--models", str(tmp_path), "--port", "0",
                           "--workers", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "is not a bundle" in done.stderr and " on http://" not in done.stderr, done.stderr


def test_serve_refuses_a_bad_bundle_before_listening(tmp_path, capsys):
    assert cli.main(["serve", "--models", str(tmp_path), "--port", "0"]) == 2
    assert "is not a bundle" in capsys.readouterr().err


def test_info_describes_the_bundle(bundles, capsys):
    assert cli.main(["info", "--models", str(bundles["b"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    bundle = load_bundle(bundles["b"])
    assert info["bundle_sha256"] == bundle.digest and info["bundle_version"] == 2
    assert [m["name"] for m in info["base_models"]] == ["lightgbm", "ridge"] and info["horizons"] == list(HORIZONS)
    assert info["data"]["rows"] == 3 * 420 and info["data"]["data_hash"] == bundle.models["ridge"].meta_["data_hash"]
    assert cli.main(["info", "--models", str(bundles["b"])]) == 0
    assert bundle.digest in capsys.readouterr().out


# -- lineage -----------------------------------------------------------------------------------

def test_target_timestamp_is_h_bars_ahead():
    daily = FrequencyInfo("1D", 86400.0, False, 1.0, 252.0)
    ts = pd.to_datetime(["2024-03-07", "2024-03-08", "2024-03-09"])  # Thu, Fri, Sat
    got = target_timestamps(ts, np.array([1, 1, 1]), daily)
    assert list(pd.DatetimeIndex(got).strftime("%a %Y-%m-%d")) == ["Fri 2024-03-08", "Mon 2024-03-11", "Mon 2024-03-11"]
    got = target_timestamps(pd.to_datetime(["2024-03-08 16:00"] * 2), np.array([5, 20]), daily)
    assert list(pd.DatetimeIndex(got)) == [pd.Timestamp("2024-03-15 16:00"), pd.Timestamp("2024-04-05 16:00")]
    hourly = FrequencyInfo("1h", 3600.0, True, 7.0, 252.0 * 7)
    got = target_timestamps(pd.to_datetime(["2024-03-08 10:00"]), np.array([3]), hourly)
    assert list(pd.DatetimeIndex(got)) == [pd.Timestamp("2024-03-08 13:00")]
    got = target_timestamps(pd.to_datetime(["2024-03-08"]), np.array([1]), daily, weekends=True)
    assert list(pd.DatetimeIndex(got)) == [pd.Timestamp("2024-03-09")]  # markets open every day
    weekly = FrequencyInfo("1W", 7 * 86400.0, False, 1.0, 52.0)
    got = target_timestamps(pd.to_datetime(["2024-03-08"]), np.array([2]), weekly)
    assert list(pd.DatetimeIndex(got)) == [pd.Timestamp("2024-03-22")]


def test_a_table_written_before_lineage_is_migrated_in_place(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with sa.create_engine(url).begin() as conn:  # the schema before lineage, with one row
        conn.exec_driver_sql("CREATE TABLE preds (symbol VARCHAR(32), timestamp DATETIME, horizon INTEGER, "
                             "yhat FLOAT, yhat_std FLOAT, prob_up FLOAT, ridge FLOAT, "
                             "PRIMARY KEY (symbol, timestamp, horizon))")
        conn.exec_driver_sql("INSERT INTO preds VALUES ('A', '2020-01-01 00:00:00.000000', 1, 0.1, 1.0, 0.5, 0.1)")
    new = pd.DataFrame({"symbol": ["A"], "timestamp": [pd.Timestamp("2020-01-02")], "horizon": [1],
                        "target_timestamp": [pd.Timestamp("2020-01-03")], "bundle_sha256": ["f" * 64],
                        "bundle_version": [2], "yhat": [0.2], "yhat_std": [1.0], "prob_up": [0.6], "ridge": [0.2]})
    write_predictions(new, url)
    table = read_predictions(url)
    assert len(table) == 2 and table["bundle_sha256"].isna().tolist() == [True, False]
    assert table["bundle_sha256"].iloc[1] == "f" * 64 and table["bundle_version"].iloc[1] == 2
    assert table["target_timestamp"].isna().tolist() == [True, False]
    with pytest.raises(InputError, match=r"predictions lack column\(s\) \['target_timestamp', 'bundle_sha256'"):
        write_predictions(new.drop(columns=["target_timestamp", "bundle_sha256"]), url)


def test_freeze_heap_keeps_the_collector_off_the_bundle_and_frees_it_after_a_reload():
    """serve freezes the heap once the bundle is loaded (a full collection otherwise stalls every
    thread every few hundred requests); after a reload the old bundle's cycles are freed."""
    import gc
    import weakref

    from alphafactory.serving.app import freeze_heap

    class Node:
        pass

    a = Node()
    a.self = a  # a reference cycle: only the cyclic collector frees it
    ref = weakref.ref(a)
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        del a
        gc.collect()
        assert ref() is not None  # frozen: the collector does not walk it
        freeze_heap(collect_frozen=True)  # what Service.reload does after the swap
        assert ref() is None
    finally:
        gc.unfreeze()
