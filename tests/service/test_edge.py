"""The API's edge under hostile or unlucky traffic (an adversarial drill): authentication before any body is
read, body caps, the database away (503 + Retry-After, never 500), NUL and other malformed input (404 / 422,
never 500), malformed or non-JSON bodies (400 / 415), the team job quota (429), the queue's team view, the
metric stream's starting point, and dashboard sessions that end on sign-out. TestClient on SQLite and
PostgreSQL, and a real uvicorn server where the socket matters."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.service.conftest import auth, free_port, uvicorn_server

SPEC = {"student": "org/student", "teacher": "org/teacher", "steps": 5, "batch_size": 8, "group_size": 4}


def submit(client, key: str, spec: dict | None = None, **headers: str) -> httpx.Response:
    return client.post("/v1/jobs", json=spec or SPEC, headers={**auth(key), **headers})


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send a request head and at most `body` (never the rest the head promises), then read the answer: it can
    only come back if the server answers without waiting for the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection without an answer"
            data += chunk
        head_bytes, rest = data.split(b"\r\n\r\n", 1)
        status_line, *lines = head_bytes.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        while len(rest) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(status_line.split()[1]), headers, rest


# ---------------------------------------------------------------------------------------------------------
# 1. Authentication before the body; body caps
# ---------------------------------------------------------------------------------------------------------


def test_an_unauthenticated_300mb_post_is_401_before_its_body_is_read(keys, service_env) -> None:
    with uvicorn_server({**service_env, "RLAD_MAX_UPLOAD_BYTES": "100000"}) as port:
        for auth_header in ("", "Authorization: Bearer rlad_not_a_key\r\n"):
            # Content-Length promises 300 MB and 64 KB arrive: the answer comes without the server waiting for the rest
            status, headers, body = raw_request(
                port,
                f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth_header}"
                f"Content-Length: {300 * 1024 * 1024}\r\n",
                b"[" * 65536,
            )
            assert status == 401 and headers["www-authenticate"] == "Bearer"
            assert json.loads(body)["error"]["code"] == "unauthorized"
        # a chunked body that never ends
        status, _, _ = raw_request(
            port,
            "POST /v1/datasets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n",
            b"10000\r\n" + b"x" * 65536,
        )
        assert status == 401
        # an authenticated one beyond the cap is refused at once, on its Content-Length alone
        status, _, body = raw_request(
            port,
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['red']}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {300 * 1024 * 1024}\r\n",
        )
        assert status == 413 and json.loads(body)["error"]["code"] == "too_large"
        # so is an upload beyond RLAD_MAX_UPLOAD_BYTES and the multipart allowance: nothing of it is parsed or spooled
        status, _, body = raw_request(
            port,
            f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{keys['red']}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n",
            b"--b\r\n",
        )
        assert status == 413 and json.loads(body)["error"]["code"] == "too_large"


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data  # closed
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = next(
        int(v) for k, v in (ln.split(b":", 1) for ln in head.split(b"\r\n")[1:]) if k.lower() == b"content-length"
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head


def test_an_idle_kept_alive_connection_outlives_the_clients_idle_timeout(service_env) -> None:
    """The API keeps an idle connection open longer than clients do (httpx drops one after 5 s): a client never
    reuses a connection that the server is closing at that moment."""
    with uvicorn_server(service_env) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request)
        assert _read_answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6.0)  # past httpx's keep-alive expiry and uvicorn's default (5 s)
        sock.sendall(request)
        assert _read_answer(sock).startswith(b"HTTP/1.1 200"), "the server closed the idle connection"


def test_an_authenticated_json_body_over_the_cap_is_413_and_stores_nothing(client, keys) -> None:
    big = {**SPEC, "name": "x" * (2 * 1024 * 1024)}
    r = submit(client, keys["red"], big)  # 2 MB, Content-Length given
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large" and "1048576 bytes" in r.text
    read: list[int] = []

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length, the bytes are counted as they come
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 65536):
            read.append(i)
            yield payload[i : i + 65536]

    r = client.post("/v1/jobs", content=chunks(), headers={**auth(keys["red"]), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert client.get("/v1/jobs", headers=auth(keys["red"])).json()["items"] == []
    ok = submit(client, keys["red"])
    assert ok.status_code == 202, ok.text  # an ordinary body still passes


def test_an_oversized_upload_is_413_and_stores_no_dataset(client, keys, monkeypatch) -> None:
    from store.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 1000)
    line = b'{"prompt": "1+1=", "answer": "2"}\n'
    h = auth(keys["red"])
    r = client.post("/v1/datasets", files={"file": ("big.jsonl", line * 10_000)}, headers=h)  # 340 KB
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    boundary = "rladboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def chunked_upload() -> Iterator[bytes]:
        yield head
        for _ in range(100):
            yield line * 100
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/v1/datasets",
        content=chunked_upload(),
        headers={**h, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert client.get("/v1/datasets", headers=h).json()["items"] == []
    assert client.post("/v1/datasets", files={"file": ("ok.jsonl", line)}, headers=h).status_code == 201


# ---------------------------------------------------------------------------------------------------------
# 2. The database away
# ---------------------------------------------------------------------------------------------------------


def test_a_refused_database_is_503_with_retry_after_and_readyz_hides_the_details(tmp_path) -> None:
    dead = free_port()  # nothing listens there: connection refused
    env = {
        "RLAD_DATA_DIR": str(tmp_path / "data"),
        "RLAD_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{dead}/rlad",
    }
    with uvicorn_server(env) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for method, path in [
            ("GET", "/v1/jobs/job_0123456789abcdef01234567"),
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("GET", "/v1/queue"),
        ]:
            r = http.request(method, path, headers=auth("rlad_some_key"), json=SPEC if method == "POST" else None)
            assert r.status_code == 503, (method, path, r.text)
            assert int(r.headers["retry-after"]) > 0 and r.json()["error"]["code"] == "database_unavailable"
            assert str(dead) not in r.text
        # a dashboard page over a dead database is 503 too, not 500
        assert http.get("/ui/jobs", headers={"Cookie": "rlad_session=x"}).status_code == 503
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {
            "status": "unavailable",
            "checks": {"database": "unavailable", "broker": "ok"},
        }
        for secret in (str(dead), "127.0.0.1", "psycopg", "Error", "refused", "SELECT"):
            assert secret not in ready.text


def test_a_database_lost_after_sign_in_is_503_on_every_route(client, keys, monkeypatch) -> None:
    from tests.service.conftest import reset_caches

    job = submit(client, keys["red"]).json()
    h = auth(keys["red"])
    assert client.get("/v1/jobs", headers=h).status_code == 200  # the key is now cached: auth needs no query
    monkeypatch.setenv("RLAD_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/rlad")
    reset_caches()
    for method, path in [
        ("GET", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job['id']}/metrics"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", "/v1/datasets"),
    ]:
        r = client.request(method, path, headers=h, json=SPEC if path == "/v1/jobs" and method == "POST" else None)
        assert r.status_code == 503 and r.headers["retry-after"] == "5", (method, path, r.text)
        assert r.json()["error"]["code"] == "database_unavailable"


# ---------------------------------------------------------------------------------------------------------
# 3. NUL and other malformed strings: 404 / 422 at the edge, never a 500
# ---------------------------------------------------------------------------------------------------------


JOB_SUBPATHS = [
    ("GET", ""),
    ("POST", "/cancel"),
    ("GET", "/events"),
    ("GET", "/metrics"),
    ("GET", "/metrics/latest"),
    ("GET", "/samples"),
    ("GET", "/metrics/stream"),
    ("GET", "/checkpoints"),
    ("GET", "/checkpoints/1"),
    ("GET", "/checkpoints/1/download"),
    ("GET", "/checkpoints/1/files/config.json"),
]


@pytest.mark.parametrize("bad_id", ["a%00b", "job_%00", "job_0123%00", "JOB_ABC", "job_xyz"])
def test_a_malformed_job_id_is_404_on_every_job_route(client, keys, bad_id: str) -> None:
    h = auth(keys["red"])
    for method, sub in JOB_SUBPATHS:
        r = client.request(method, f"/v1/jobs/{bad_id}{sub}", headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, sub, r.status_code)


def test_nul_in_query_strings_is_422_naming_the_parameter(client, keys) -> None:
    h = auth(keys["red"])
    job = submit(client, keys["red"]).json()
    for path, field in [
        ("/v1/jobs?method=a%00b", "method"),
        ("/v1/jobs?after=a%00b", "after"),
        ("/v1/jobs?after=job_1%00", "after"),
        (f"/v1/jobs/{job['id']}/metrics?key=a%00b", "key"),
        (f"/v1/jobs/{job['id']}/metrics/latest?key=loss&key=%00", "key"),
    ]:
        r = client.get(path, headers=h)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
        assert any(f["field"].startswith(field) for f in r.json()["error"]["fields"]), (path, r.text)
    r = client.get(f"/v1/jobs/{job['id']}/checkpoints/1/files/a%00b", headers=h)
    assert r.status_code == 404
    assert client.get(f"/v1/jobs?after={job['id']}&method=rlad", headers=h).status_code == 200


def test_nul_in_a_body_is_422_or_dropped_never_500(client, keys) -> None:
    h = auth(keys["red"])
    r = submit(client, keys["red"], {**SPEC, "name": "a\x00b"})
    assert r.status_code == 422 and r.json()["error"]["fields"] == [
        {"field": "name", "message": "contains a NUL character; fix: remove it"}
    ]
    r = submit(client, keys["red"], {**SPEC, "task": {"name": "jsonl", "path": "dataset:\x00"}})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "task.path"
    line = b'{"prompt": "1+1=", "answer": "2"}\n'
    r = client.post("/v1/datasets", files={"file": ("a.jsonl", line)}, data={"name": "a\x00b"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"].startswith("name")
    r = client.post("/v1/datasets", files={"file": ("a\x00b.jsonl", line)}, headers=h)
    assert r.status_code == 201 and "\x00" not in r.json()["name"]
    assert client.get("/v1/jobs", headers=h).json()["items"] == []


def test_dashboard_pages_answer_a_malformed_job_id_without_a_query(client, keys) -> None:
    job = submit(client, keys["red"]).json()
    client.post("/ui/login", data={"key": keys["red"]}, follow_redirects=False)
    token = client.cookies["rlad_session"]
    client.cookies.clear()
    cookie = {"Cookie": f"rlad_session={token}"}
    assert client.get("/ui/jobs/a%00b", headers=cookie).status_code == 404
    r = client.get(f"/ui/compare?job=a%00b&job={job['id']}", headers=cookie)
    assert r.status_code == 200 and job["id"] in r.text


# ---------------------------------------------------------------------------------------------------------
# 4. Bodies that are not JSON
# ---------------------------------------------------------------------------------------------------------


def test_unparsable_json_is_400_and_a_non_json_body_is_415(client, keys) -> None:
    h = {**auth(keys["red"]), "Content-Type": "application/json"}
    r = client.post("/v1/jobs", content=b'{"student": "s", ', headers=h)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "bad_request"
    assert err["message"].startswith("the body is not valid JSON: ") and "character 17" in err["message"]
    r = client.post("/v1/jobs", content=json.dumps(SPEC), headers={**auth(keys["red"]), "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == {
        "code": "unsupported_media_type",
        "fields": [],
        "message": "send the body as JSON with Content-Type: application/json",
    }
    assert client.get("/v1/jobs", headers=auth(keys["red"])).json()["items"] == []
    r = client.post(
        "/v1/jobs", content=json.dumps(SPEC), headers={**h, "Content-Type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 202


# ---------------------------------------------------------------------------------------------------------
# 5. The team job quota
# ---------------------------------------------------------------------------------------------------------


def test_a_team_at_its_active_job_limit_gets_429_and_nothing_is_stored(client, keys, monkeypatch) -> None:
    from store.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_active_jobs_per_team", 2)
    h = auth(keys["red"])
    first = submit(client, keys["red"], **{"Idempotency-Key": "one"}).json()
    assert submit(client, keys["red"]).status_code == 202
    r = submit(client, keys["red"])
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert (
        r.json()["error"]["code"] == "quota_exceeded" and "max_active_jobs_per_team=2" in r.json()["error"]["message"]
    )
    assert len(client.get("/v1/jobs", headers=h).json()["items"]) == 2
    # the same idempotent request still returns its job; another team has its own quota
    assert submit(client, keys["red"], **{"Idempotency-Key": "one"}).status_code == 200
    assert submit(client, keys["blue"]).status_code == 202
    # a finished (here: cancelled) job frees its place
    client.post(f"/v1/jobs/{first['id']}/cancel", headers=h)
    assert submit(client, keys["red"]).status_code == 202


def test_count_active_jobs_counts_queued_and_held_jobs_only(client, keys) -> None:
    from store import jobs as job_store
    from store.db import session_scope
    from store.teams import team_for_key
    from store.usage import count_active_jobs

    ids = [submit(client, keys["red"]).json()["id"] for _ in range(3)]
    with session_scope() as s:
        red, blue = (team_for_key(s, key=keys[t]).id for t in ("red", "blue"))
        job_store.claim_job(s, job_id=ids[0], worker="gpu@a")
        job_store.request_cancel(s, team_id=red, job_id=ids[1])
    with session_scope() as s:
        assert count_active_jobs(s, team_id=red) == 2  # starting + queued; the cancelled one is done
        assert count_active_jobs(s, team_id=blue) == 0


# ---------------------------------------------------------------------------------------------------------
# 7. The live metric stream starts from the newest points
# ---------------------------------------------------------------------------------------------------------


def _event_steps(body: str) -> list[int]:
    """The steps of the `metrics` events in a stream's body."""
    return [json.loads(f.split("data: ", 1)[1])["step"] for f in body.split("\n\n") if "event: metrics" in f]


def _stream_steps(client, path: str, headers: dict[str, str]) -> list[int]:
    with client.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200
        body = "".join(r.iter_text())
    return _event_steps(body)


def test_a_stream_without_a_cursor_starts_with_the_newest_points_and_a_cursor_resumes_exactly(
    client, keys, monkeypatch
) -> None:
    from api.routes import metrics as metric_routes
    from store import metrics as metric_store
    from store.db import session_scope

    monkeypatch.setattr(metric_routes, "TAIL_POINTS", 15)
    h = auth(keys["red"])
    job = submit(client, keys["red"]).json()
    with session_scope() as s:  # three batches, written at t = 100, 200, 300
        metric_store.write_metrics(s, job_id=job["id"], rows=[(i, {"loss": 1.0}) for i in range(1, 51)], at=100.0)
        metric_store.write_metrics(s, job_id=job["id"], rows=[(i, {"loss": 1.0}) for i in range(51, 61)], at=200.0)
        metric_store.write_metrics(s, job_id=job["id"], rows=[(i, {"loss": 1.0}) for i in range(61, 71)], at=300.0)
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=h)  # terminal: each stream ends after its points
    base = f"/v1/jobs/{job['id']}/metrics/stream?poll_s=0.1"
    # the newest 15 points lie in the last two batches: those (whole), not the 50 steps before
    assert _stream_steps(client, base, h) == list(range(51, 71))
    assert _stream_steps(client, base + "&since=0", h) == list(range(1, 71))
    assert _stream_steps(client, base + "&since=200", h) == list(range(61, 71))
    assert _stream_steps(client, base, {**h, "Last-Event-ID": "100.0"}) == list(range(51, 71))


def test_streams_opened_together_share_one_read_of_the_initial_tail(client, keys, monkeypatch) -> None:
    import asyncio

    from api.routes import metrics as metric_routes
    from store import metrics as metric_store
    from store.db import session_scope

    monkeypatch.setattr(metric_routes, "TAIL_POINTS", 5)
    job = submit(client, keys["red"]).json()
    with session_scope() as s:
        metric_store.write_metrics(s, job_id=job["id"], rows=[(i, {"loss": 1.0}) for i in range(1, 51)], at=100.0)
        metric_store.write_metrics(s, job_id=job["id"], rows=[(i, {"loss": 1.0}) for i in range(51, 61)], at=200.0)
    reads: list[str] = []
    read_tail = metric_routes._read_tail

    def counted(job_id: str) -> tuple[str, float]:
        reads.append(job_id)
        return read_tail(job_id)

    monkeypatch.setattr(metric_routes, "_read_tail", counted)

    async def open_streams(n: int) -> list[tuple[str, float]]:
        return await asyncio.gather(*(metric_routes._initial_tail(job["id"]) for _ in range(n)))

    async def twenty_then_one_later() -> tuple[list[tuple[str, float]], tuple[str, float]]:
        together = await open_streams(20)
        await asyncio.sleep(metric_routes.TAIL_SHARE_S + 0.1)
        return together, (await open_streams(1))[0]

    together, later = asyncio.run(twenty_then_one_later())
    assert reads == [job["id"], job["id"]]  # one read for the twenty, one for the stream opened later
    text, cursor = together[0]
    assert all(t == (text, cursor) for t in together) and later == (text, cursor) and cursor == 200.0
    steps = [json.loads(line[6:])["step"] for line in text.splitlines() if line.startswith("data: ")]
    assert steps == list(range(51, 61))  # the newest batch whole (5 points lie in it), not the history


STREAMS_AT_ONCE = 60  # more than three times what a pool gives out (PostgreSQL 10 + 10 overflow, SQLite 5 + 10)


def test_more_streams_opened_at_once_than_the_pool_has_connections_all_open(client, keys, service_env) -> None:
    """A dashboard opened by many people: the streams wait on one shared read of the initial tail, and none
    holds a database connection while it waits (had they kept theirs, the read would starve for a connection,
    and every stream get 503 after the pool's timeout)."""
    import asyncio

    from store import metrics as metric_store
    from store.db import session_scope

    job = submit(client, keys["red"]).json()
    with session_scope() as s:
        metric_store.write_metrics(s, job_id=job["id"], rows=[(i, {"loss": 1.0}) for i in range(1, 31)], at=100.0)

    async def open_one(http: httpx.AsyncClient) -> tuple[int, list[int]]:
        async with http.stream("GET", f"/v1/jobs/{job['id']}/metrics/stream", headers=auth(keys["red"])) as r:
            body = ""
            if r.status_code == 200:
                async for chunk in r.aiter_text():
                    body += chunk
                    if "data: " in body and body.endswith("\n\n"):
                        break  # the opening events: the newest points (all 30 here)
            return r.status_code, _event_steps(body)

    async def open_all(port: int) -> list[tuple[int, list[int]]]:
        limits = httpx.Limits(max_connections=STREAMS_AT_ONCE)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:
            return await asyncio.gather(*(open_one(http) for _ in range(STREAMS_AT_ONCE)))

    with uvicorn_server(service_env) as port:
        opened = asyncio.run(open_all(port))
    assert [status for status, _ in opened] == [200] * STREAMS_AT_ONCE
    assert all(steps == list(range(1, 31)) for _, steps in opened)


# ---------------------------------------------------------------------------------------------------------
# 8. Dashboard sessions
# ---------------------------------------------------------------------------------------------------------


def test_the_cookie_is_a_session_token_not_the_key_and_sign_out_ends_it_everywhere(client, keys) -> None:
    job = submit(client, keys["red"]).json()
    r = client.post("/ui/login", data={"key": keys["red"]}, follow_redirects=False)
    token = r.cookies["rlad_session"]
    client.cookies.clear()
    assert token != keys["red"] and keys["red"] not in r.headers["set-cookie"]
    assert "max-age=43200" in r.headers["set-cookie"].lower()  # RLAD_UI_SESSION_TTL_S, not a week
    cookie = {"Cookie": f"rlad_session={token}"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=cookie).status_code == 200
    assert client.get("/ui/jobs", headers=cookie, follow_redirects=False).status_code == 200
    # the raw key in the cookie is no sign-in
    assert client.get("/v1/jobs", headers={"Cookie": f"rlad_session={keys['red']}"}).status_code == 401
    out = client.post("/ui/logout", headers=cookie, follow_redirects=False)
    assert out.status_code == 303 and 'rlad_session=""' in out.headers["set-cookie"]
    client.cookies.clear()
    # a copy of the old cookie (another browser, a stolen value) stops working at once
    r = client.get(f"/v1/jobs/{job['id']}", headers=cookie)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.get("/ui/jobs", headers=cookie, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_an_expired_session_is_no_sign_in(client, keys) -> None:
    from store import sessions
    from store.db import session_scope
    from store.teams import team_for_key

    with session_scope() as s:
        team_id = team_for_key(s, key=keys["red"]).id
        live = sessions.create_session(s, team_id=team_id, ttl_s=600)
        expired = sessions.create_session(s, team_id=team_id, ttl_s=0.001)
    time.sleep(0.01)
    with session_scope() as s:
        assert sessions.team_for_session(s, token=live).id == team_id
        assert sessions.team_for_session(s, token=expired) is None
    assert client.get("/v1/jobs", headers={"Cookie": f"rlad_session={expired}"}).status_code == 401
    assert client.get("/v1/jobs", headers={"Cookie": f"rlad_session={live}"}).status_code == 200
