"""Engine and sessions. SQLite (embedded) gets WAL and a busy timeout: the API, the worker and the trainer
process write to one file."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from store.settings import get_settings

log = logging.getLogger("rlad.db")
T = TypeVar("T")


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # isolation_level=None: we issue BEGIN ourselves (below) so that writes take the lock up front
            # (BEGIN IMMEDIATE) instead of failing on lock upgrade; WAL lets readers run beside one writer
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":  # read sessions take no lock
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # pre-ping: a pooled connection dropped by a database restart is replaced at checkout instead of failing the
    # request that meets it (a round trip per checkout; the job poll path answers from its cache without one)
    # connect_timeout: a database host that does not answer fails a call in seconds instead of hanging it
    connect_args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=300,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache
def _sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@lru_cache
def _read_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine().execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


@contextmanager
def read_session() -> Iterator[Session]:
    """Reads only, no transaction (autocommit): one round trip per query, and on SQLite no write lock."""
    with _read_sessionmaker()() as session:
        yield session


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit on success, roll back on error. Store functions never commit themselves."""
    with _sessionmaker()() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def after_fork() -> None:
    """In a forked child: drop the parent's pooled connections without closing them (they are the parent's)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


def reset_caches() -> None:
    """Forget the cached settings, engine and sessions (tests that change the environment)."""
    from store.settings import get_settings as gs

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    _sessionmaker.cache_clear()
    _read_sessionmaker.cache_clear()
    gs.cache_clear()


def is_unavailable(exc: BaseException) -> bool:
    """The database is away (refused, restarting, connection dropped, pool exhausted), as opposed to a bad
    query: the same call can succeed later."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_unavailable(
    fn: Callable[[], T], *, what: str, max_delay_s: float | None = None, give_up: Callable[[], bool] | None = None
) -> T:
    """`fn()`, called again with exponential backoff (0.5 s doubling to `max_delay_s`, default the setting
    `db_retry_max_s`) for as long as the database is unavailable; any other error is raised at once. `give_up`
    (checked between tries) ends the retries by raising the last error.

    For workers: a job must outlive a database restart, so their database calls wait for it rather than fail."""
    max_delay_s = max_delay_s if max_delay_s is not None else get_settings().db_retry_max_s
    delay, failures = 0.5, 0
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not is_unavailable(exc) or (give_up is not None and give_up()):
                raise
            failures += 1
            if failures == 1:
                log.warning(
                    "%s: the database is unavailable (%s); retrying every <= %.0f s",
                    what,
                    type(exc).__name__,
                    max_delay_s,
                )
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            continue
        if failures:
            log.info("%s: the database is back after %d failed tries", what, failures)
        return result
