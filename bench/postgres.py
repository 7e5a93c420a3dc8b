"""The benches' PostgreSQL: ``--postgres-url`` and a database of the run's own on it."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEFAULT_POSTGRES = "postgresql://root@127.0.0.1:5432/test"


def add_postgres_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("SCORER_BENCH_POSTGRES_URL", DEFAULT_POSTGRES),
        help="a PostgreSQL server where this user may create databases; the run creates a"
        " database of its own there and drops it (default: $SCORER_BENCH_POSTGRES_URL, else"
        f" {DEFAULT_POSTGRES})",
    )


@contextlib.contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A database of this run's own on ``server`` (a URL where databases may be created),
    dropped at the end however the run ends."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        sys.exit(f"cannot create a database at {server}: {exc}".strip())
    try:
        yield urlunsplit(urlsplit(server)._replace(path="/" + name))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def store_url(store: str, postgres_url: str) -> Iterator[tuple[str, Path]]:
    """A fresh store's URL (``store``: sqlite, a file in a temp dir; postgres, a database of
    its own) and the temp dir, both gone at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        if store == "sqlite":
            yield f"sqlite:///{Path(tmp) / 'bench.db'}", Path(tmp)
        else:
            with postgres_database(postgres_url) as url:
                yield url, Path(tmp)
