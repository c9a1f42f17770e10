"""Administration of the service's store from the command line, for tools that are not the service itself
(`rlad keys create`, the embedded launcher `rlad.service.LocalService`), so that the client side imports no
store code:

    python -m store.admin migrate                    # the database to the newest revision
    python -m store.admin create-key --team NAME [--role admin|write|read] [--name N] [--expires-days D]
                                                     # mint an API key (printed once, on stdout)

Settings come from the environment (RLAD_DATA_DIR, RLAD_DATABASE_URL), as for the service. Exit code 1 with a
message naming the database and the fix when it cannot be reached or written.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from store.db import session_scope
from store.migrate import upgrade
from store.models import KeyRole, utcnow
from store.settings import get_settings
from store.teams import create_api_key


def migrate() -> None:
    upgrade(get_settings().resolved_database_url)


def create_key(
    team: str, *, role: KeyRole = KeyRole.admin, name: str | None = None, expires_days: float | None = None
) -> str:
    expires = utcnow() + timedelta(days=expires_days) if expires_days else None
    with session_scope() as session:
        return create_api_key(session, team_name=team, role=role, name=name, expires_at=expires)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.admin", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="bring the database to the newest Alembic revision")
    key = sub.add_parser("create-key", help="mint an API key for a team (created if new); printed once")
    key.add_argument("--team", required=True, help="team name")
    key.add_argument("--role", choices=[r.value for r in KeyRole], default="admin", help="default: admin")
    key.add_argument("--name", default=None, help="a name to tell the key apart in listings")
    key.add_argument("--expires-days", type=float, default=None, help="default: never expires")
    args = parser.parse_args(argv)
    try:
        if args.command == "migrate":
            migrate()
        else:
            team = args.team.strip()
            if not team:
                parser.error("--team: the team name is empty")
            if args.expires_days is not None and not 0 < args.expires_days <= 3650:
                parser.error("--expires-days: must be > 0 and at most 3650")
            print(create_key(team, role=KeyRole(args.role), name=args.name, expires_days=args.expires_days))
    except SQLAlchemyError as exc:
        url = get_settings().resolved_database_url
        print(f"error: cannot use the database {url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        print(
            "fix: start the service once with `rlad up` (it creates the database), or set RLAD_DATA_DIR / "
            "RLAD_DATABASE_URL to the service's",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
