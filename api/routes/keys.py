"""The team's API keys and audit log, for its admin keys (`store.teams.required_role`, checked by the edge
guard before a body is read): list, mint, rotate and revoke keys; read who submitted, cancelled and changed
keys, when and from where."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam

from api.deps import CallerDep, ReadSessionDep, SessionDep, audited, forget_key, json_body
from api.responses import E400, E401, E403, E404, E413, E415, E422, Responses
from api.schemas import (
    AuditEventPublic,
    AuditList,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPublic,
    KeyRotate,
    KeyRotated,
    WebhookSecret,
)
from store import audit, teams, webhooks
from store.models import ApiKey, utcnow

router = APIRouter(tags=["keys"])
E404K: Responses = {404: {"model": E404[404]["model"], "description": "no such key for this team"}}
KeyId = Annotated[str, PathParam(max_length=40, pattern=r"^key_[0-9a-f]{1,36}$", description="a key id")]


def key_public(key: ApiKey) -> KeyPublic:
    return KeyPublic(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        role=key.role,
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        live=teams.is_live(key),
    )


@router.get("/v1/keys", response_model=KeyList, responses={**E401, **E403})
def list_keys(session: ReadSessionDep, caller: CallerDep) -> KeyList:
    """Every key of the team, live or not, oldest first (never the secrets)."""
    return KeyList(items=[key_public(k) for k in teams.list_keys(session, team_id=caller.team_id)])


@router.post(
    "/v1/keys",
    status_code=201,
    response_model=KeyCreated,
    responses={**E400, **E401, **E403, **E413, **E415, **E422},
    dependencies=[Depends(json_body)],
)
def create_key(body: KeyCreate, session: SessionDep, caller: CallerDep, request: Request) -> KeyCreated:
    """Mint a key for the team; the response holds it in clear, this once."""
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    row, clear = teams.mint_key(session, team_id=caller.team_id, role=body.role, name=body.name, expires_at=expires)
    audited(session, caller, request, "key.create", row.id, **teams.describe(row))
    return KeyCreated(**key_public(row).model_dump(), key=clear)


@router.post(
    "/v1/keys/{key_id}/rotate",
    status_code=201,
    response_model=KeyRotated,
    responses={**E400, **E401, **E403, **E404K, **E413, **E415, **E422},
    dependencies=[Depends(json_body)],
)
def rotate_key(
    key_id: KeyId, session: SessionDep, caller: CallerDep, request: Request, body: KeyRotate | None = None
) -> KeyRotated:
    """A new key with the old one's name, role and expiry; the old one keeps working for `grace_s` seconds
    (default an hour), so clients switch over without downtime."""
    grace = timedelta(seconds=(body or KeyRotate()).grace_s)
    new, clear, old = teams.rotate_key(session, team_id=caller.team_id, key_id=key_id, grace=grace)
    ends = old.expires_at.isoformat() if old.expires_at else None
    audited(session, caller, request, "key.rotate", old.id, new_key=new.id, old_expires_at=ends)
    if grace.total_seconds() == 0:
        forget_key(old.id)
    return KeyRotated(new=KeyCreated(**key_public(new).model_dump(), key=clear), old=key_public(old))


@router.delete("/v1/keys/{key_id}", response_model=KeyPublic, responses={**E401, **E403, **E404K, **E422})
def revoke_key(key_id: KeyId, session: SessionDep, caller: CallerDep, request: Request) -> KeyPublic:
    """Revoke a key: refused at once by this API process, within a second by every other (their caches of
    recently seen keys last `store.teams.KEY_CACHE_TTL_S`); the dashboard sign-ins made with it end too.
    Revoking a revoked key changes nothing."""
    key = teams.revoke_key(session, team_id=caller.team_id, key_id=key_id)
    audited(session, caller, request, "key.revoke", key.id, **teams.describe(key))
    forget_key(key.id)
    return key_public(key)


@router.get("/v1/audit", response_model=AuditList, responses={**E401, **E403, **E422})
def audit_log(
    session: ReadSessionDep,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="`next_after` of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditList:
    """The team's audit log, oldest first, a page at a time."""
    rows = audit.list_events(session, team_id=caller.team_id, after=after, limit=limit + 1)
    page = rows[:limit]
    return AuditList(
        items=[
            AuditEventPublic(
                id=e.id,
                action=e.action,
                target=e.target,
                key_id=e.key_id,
                address=e.address,
                data=e.data,
                created_at=e.created_at,
            )
            for e in page
        ],
        next_after=page[-1].id if len(rows) > limit else None,
    )


@router.get("/v1/webhook-secret", response_model=WebhookSecret, responses={**E401, **E403})
def webhook_secret(session: SessionDep, caller: CallerDep) -> WebhookSecret:
    """The team's webhook secret (made on first read): a webhook body's `X-Rlad-Signature` is
    `sha256=<hex HMAC-SHA256 of the raw body with it>`."""
    return WebhookSecret(secret=webhooks.secret_for(session, team_id=caller.team_id), header=webhooks.SIGNATURE_HEADER)


@router.post("/v1/webhook-secret/rotate", response_model=WebhookSecret, responses={**E401, **E403})
def rotate_webhook_secret(session: SessionDep, caller: CallerDep) -> WebhookSecret:
    """A new webhook secret; deliveries from now on are signed with it."""
    secret = webhooks.secret_for(session, team_id=caller.team_id, rotate=True)
    return WebhookSecret(secret=secret, header=webhooks.SIGNATURE_HEADER)
