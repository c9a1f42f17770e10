"""Keys and access: roles (read / write / admin), expiry, revocation (within a second on every API process,
the cached poll path included), rotation without downtime, last use, the audit log, on SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from tests.service.conftest import auth, tiny_spec, uvicorn_server


def _new_key(client, admin: str, **body) -> dict:
    r = client.post("/v1/keys", json=body, headers=auth(admin))
    assert r.status_code == 201, r.text
    return r.json()


def test_roles_decide_what_a_key_may_do_before_the_body_is_read(client, keys, micro_models) -> None:
    admin = keys["red"]
    read = _new_key(client, admin, role="read", name="dashboard")
    write = _new_key(client, admin, role="write", name="ci")
    assert read["key"].startswith("rlad_") and read["role"] == "read" and read["live"]
    job = client.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(write["key"]))
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    # read: polls and lists, never submits, cancels or uploads (403 naming the role and the fix)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(read["key"])).status_code == 200
    assert client.get("/v1/jobs", headers=auth(read["key"])).status_code == 200
    for method, path in (("POST", "/v1/jobs"), ("POST", f"/v1/jobs/{job_id}/cancel"), ("POST", "/v1/datasets")):
        r = client.request(method, path, headers=auth(read["key"]), content=b"x" * 10_000)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "forbidden" and "role is read" in r.text and "fix:" in r.text
    # write: no keys, no audit log
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("GET", "/v1/audit")):
        r = client.request(method, path, headers=auth(write["key"]))
        assert r.status_code == 403 and "only a admin key" in r.text, (path, r.text)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(write["key"])).status_code == 202
    # another team's admin sees none of red's keys and cannot revoke them
    blue = client.get("/v1/keys", headers=auth(keys["blue"])).json()["items"]
    assert [k["id"] for k in blue] != [] and read["id"] not in {k["id"] for k in blue}
    assert client.delete(f"/v1/keys/{read['id']}", headers=auth(keys["blue"])).status_code == 404


def test_bad_key_requests_name_the_field(client, keys) -> None:
    for body, field in (
        ({"role": "owner"}, "role"),
        ({"expires_in_days": 0}, "expires_in_days"),
        ({"name": "a\x00b"}, "name"),
        ({"scope": "all"}, "scope"),
    ):
        r = client.post("/v1/keys", json=body, headers=auth(keys["red"]))
        assert r.status_code == 422 and field in {f["field"] for f in r.json()["error"]["fields"]}, r.text
    assert client.delete("/v1/keys/key_../x", headers=auth(keys["red"])).status_code == 404
    assert client.delete("/v1/keys/nokey", headers=auth(keys["red"])).status_code == 422


def test_an_expired_key_is_refused_and_the_listing_shows_expiry_and_last_use(client, keys) -> None:
    from store.db import session_scope
    from store.models import ApiKey, utcnow

    short = _new_key(client, keys["red"], role="read", expires_in_days=1)
    assert client.get("/v1/jobs", headers=auth(short["key"])).status_code == 200
    listed = {k["id"]: k for k in client.get("/v1/keys", headers=auth(keys["red"])).json()["items"]}
    assert listed[short["id"]]["last_used_at"] is not None and listed[short["id"]]["expires_at"] is not None
    with session_scope() as s:  # a day later
        s.get(ApiKey, short["id"]).expires_at = utcnow() - timedelta(seconds=1)
    time.sleep(1.1)  # this process's cache of seen keys
    r = client.get("/v1/jobs", headers=auth(short["key"]))
    assert r.status_code == 401 and "expired" in r.text
    listed = {k["id"]: k for k in client.get("/v1/keys", headers=auth(keys["red"])).json()["items"]}
    assert listed[short["id"]]["live"] is False and listed[short["id"]]["revoked_at"] is None


def test_rotation_keeps_the_old_key_for_its_grace_then_ends_it(client, keys) -> None:
    old = _new_key(client, keys["red"], role="write", name="ci")
    r = client.post(f"/v1/keys/{old['id']}/rotate", json={"grace_s": 2}, headers=auth(keys["red"]))
    assert r.status_code == 201, r.text
    new = r.json()["new"]
    assert new["name"] == "ci" and new["role"] == "write" and new["key"] != old["key"]
    for key in (old["key"], new["key"]):  # both work during the grace period: clients switch over
        assert client.get("/v1/jobs", headers=auth(key)).status_code == 200
    time.sleep(3.2)  # the grace, plus the cache of seen keys
    assert client.get("/v1/jobs", headers=auth(old["key"])).status_code == 401
    assert client.get("/v1/jobs", headers=auth(new["key"])).status_code == 200
    assert client.post(f"/v1/keys/{old['id']}/rotate", headers=auth(keys["red"])).status_code == 404  # not live


def test_revocation_ends_the_key_and_its_dashboard_sign_in(client, keys) -> None:
    mine = _new_key(client, keys["red"], role="write")
    assert client.get("/v1/jobs", headers=auth(mine["key"])).status_code == 200  # now cached in this process
    signed_in = client.post("/ui/login", data={"key": mine["key"]}, follow_redirects=False)
    assert signed_in.status_code == 303
    client.cookies.set("rlad_session", signed_in.cookies["rlad_session"])
    assert client.get("/v1/jobs").status_code == 200
    r = client.delete(f"/v1/keys/{mine['id']}", headers=auth(keys["red"]))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None and not r.json()["live"]
    assert client.get("/v1/jobs", headers=auth(mine["key"])).status_code == 401  # at once in this process
    assert client.get("/v1/jobs").status_code == 401  # the sign-in made with it
    client.cookies.clear()
    assert client.delete(f"/v1/keys/{mine['id']}", headers=auth(keys["red"])).status_code == 200  # idempotent


def test_a_read_only_sign_in_cannot_cancel_from_the_dashboard(client, keys, micro_models) -> None:
    job = client.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(keys["red"])).json()
    read = _new_key(client, keys["red"], role="read")
    signed_in = client.post("/ui/login", data={"key": read["key"]}, follow_redirects=False)
    client.cookies.set("rlad_session", signed_in.cookies["rlad_session"])
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers={"x-requested-with": "dashboard"})
    assert r.status_code == 403 and "role is read" in r.text


def test_the_audit_log_records_who_did_what_from_where(client, keys, micro_models) -> None:
    admin = keys["red"]
    ci = _new_key(client, admin, role="write", name="ci")
    job = client.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(ci["key"])).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(ci["key"]))
    client.post(f"/v1/keys/{ci['id']}/rotate", json={"grace_s": 0}, headers=auth(admin))
    client.delete(f"/v1/keys/{ci['id']}", headers=auth(admin))
    client.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(keys["blue"]))  # another team's
    page = client.get("/v1/audit", headers=auth(admin)).json()
    got = [(e["action"], e["target"]) for e in page["items"]]
    red_admin = next(k for k in client.get("/v1/keys", headers=auth(admin)).json()["items"] if k["role"] == "admin")
    assert got == [
        ("key.create", red_admin["id"]),  # the operator's (rlad keys create), by no key
        ("key.create", ci["id"]),
        ("job.submit", job["id"]),
        ("job.cancel", job["id"]),
        ("key.rotate", ci["id"]),
        ("key.revoke", ci["id"]),
    ]
    by = [e["key_id"] for e in page["items"]]
    assert by[0] is None and by[2] == by[3] == ci["id"] and by[1] == by[4] == by[5] == red_admin["id"]
    assert all(e["address"] == "testclient" for e in page["items"][1:])
    assert page["items"][2]["data"]["method"] == "rlad" and page["next_after"] is None
    first = client.get("/v1/audit", params={"limit": 2}, headers=auth(admin)).json()
    rest = client.get("/v1/audit", params={"after": first["next_after"]}, headers=auth(admin)).json()
    assert [e["id"] for e in first["items"] + rest["items"]] == [e["id"] for e in page["items"]]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_operator_creates_keys_of_any_role_with_an_expiry(service_env, capsys) -> None:
    from store.admin import main
    from store.db import read_session
    from store.teams import owner_of_key

    assert main(["create-key", "--team", "ops", "--role", "read", "--name", "grafana", "--expires-days", "7"]) == 0
    key = capsys.readouterr().out.strip()
    with read_session() as s:
        owner = owner_of_key(s, key=key)
    assert owner is not None and owner.role == "read" and owner.team_name == "ops"
    with pytest.raises(SystemExit):
        main(["create-key", "--team", "ops", "--role", "owner"])


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_revocation_reaches_every_api_process_within_a_second(service_env, client, keys, micro_models) -> None:
    """Two uvicorn worker processes behind one port, each polling through its cache of seen keys and its
    cached poll path (GET /v1/jobs/{id}); revoked through one of them, the key is refused by both within
    KEY_CACHE_TTL_S (1 s) plus a poll."""
    import httpx

    job = client.post("/v1/jobs", json=tiny_spec(micro_models), headers=auth(keys["red"])).json()
    poller = _new_key(client, keys["red"], role="read")
    with (
        uvicorn_server(service_env, workers=2) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        for _ in range(40):  # new connections spread over both processes: each caches the key
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as fresh:
                assert fresh.get(f"/v1/jobs/{job['id']}", headers=auth(poller["key"])).status_code == 200
        assert http.delete(f"/v1/keys/{poller['id']}", headers=auth(keys["red"])).status_code == 200
        revoked_at = time.monotonic()
        last_ok = revoked_at
        while time.monotonic() - revoked_at < 3:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as fresh:
                status = fresh.get(f"/v1/jobs/{job['id']}", headers=auth(poller["key"])).status_code
            assert status in (200, 401)
            if status == 200:
                last_ok = time.monotonic()
        print(f"drill: revoked key last answered {last_ok - revoked_at:.3f} s after the revocation")
        assert last_ok - revoked_at < 1.2
