"""Administration of the service's store from the command line, for tools that are not the service itself
(`rlad keys create`, the embedded launcher `rlad.service.LocalService`), so that the client side imports no
store code:

    python -m store.admin migrate                    # the database to the newest revision
    python -m store.admin create-key --team NAME     # mint an API key (printed once, on stdout)

Settings come from the environment (RLAD_DATA_DIR, RLAD_DATABASE_URL), as for the service. Exit code 1 with a
message naming the database and the fix when it cannot be reached or written.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import SQLAlchemyError

from store.db import session_scope
from store.migrate import upgrade
from store.settings import get_settings
from store.teams import create_api_key


def migrate() -> None:
    upgrade(get_settings().resolved_database_url)


def create_key(team: str) -> str:
    with session_scope() as session:
        return create_api_key(session, team_name=team)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.admin", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="bring the database to the newest Alembic revision")
    key = sub.add_parser("create-key", help="mint an API key for a team (created if new); printed once")
    key.add_argument("--team", required=True, help="team name")
    args = parser.parse_args(argv)
    try:
        if args.command == "migrate":
            migrate()
        else:
            team = args.team.strip()
            if not team:
                parser.error("--team: the team name is empty")
            print(create_key(team))
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
