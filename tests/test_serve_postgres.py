"""The real server on a PostgreSQL store: webhooks are acknowledged, deduplicated, scored and
delivered through it; a database that cannot be reached stops the start with one line; the
pool size setting reaches it."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from tests.cli import one_line_error, run
from tests.eventually import eventually
from tests.server import Server, entries, payload, with_api
from tests.standin import StandIn, free_port
from tests.stores import with_query


def test_the_server_delivers_through_postgres(
    tmp_path: Path, standin: StandIn, postgres_url: str
) -> None:
    server = Server(tmp_path, with_api(standin.base_url) | {"SCORER_DATABASE_URL": postgres_url})
    try:
        server.start()
        ids = [f"pg-{i}" for i in range(10)]
        assert [server.post(payload(rid)).status_code for rid in ids] == [202] * 10
        assert server.post(payload(ids[0])).status_code == 200  # a duplicate
        assert server.client.get("/readyz").status_code == 200

        def delivered() -> bool:
            stored = entries(postgres_url)
            return set(stored) == set(ids) and all(e.state == "done" for e in stored.values())

        eventually(delivered, 30, show=lambda: (entries(postgres_url), server.log()[-2000:]))
        assert standin.posted_ids() == set(ids)
        assert all(e.posted == {"scores"} for e in entries(postgres_url).values())
    finally:
        server.close()


def test_a_database_that_does_not_answer_stops_the_start(tmp_path: Path) -> None:
    url = f"postgresql://root@127.0.0.1:{free_port()}/none?connect_timeout=2"
    env = {"HELICONE_WEBHOOK_SECRET": "k", "SCORER_DATABASE_URL": url}
    result = run(tmp_path, env, "serve", timeout=60)
    assert result.returncode == 2
    assert one_line_error(result).startswith(
        "helicone-scorer: invalid setting SCORER_DATABASE_URL: cannot open the store:"
        " connection failed: "
    )


def test_the_pool_size_setting_bounds_the_servers_sessions(
    tmp_path: Path, standin: StandIn, postgres_url: str
) -> None:
    tag = f"scorer-{uuid.uuid4().hex[:8]}"
    url = with_query(postgres_url, application_name=tag)
    env: dict[str, str | None] = {"SCORER_DATABASE_URL": url, "SCORER_DATABASE_POOL_SIZE": "2"}
    server = Server(tmp_path, with_api(standin.base_url) | env)
    try:
        server.start()
        ids = [f"pool-{i}" for i in range(40)]
        with ThreadPoolExecutor(8) as pool:  # concurrent webhooks, scoring and posting
            assert set(pool.map(lambda rid: server.post(payload(rid)).status_code, ids)) == {202}
        standin.wait_for(lambda: standin.posted_ids() >= set(ids), 60)
        # The pool keeps what it grew to: at most 2, beside three sessions of one each: the one
        # that listens, the heartbeat's, and the read path's (no reads here: its minimum).
        with psycopg.connect(postgres_url) as conn:
            (sessions,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)
            ).fetchone() or (None,)
        assert sessions is not None
        assert 4 <= sessions <= 5
    finally:
        server.close()
