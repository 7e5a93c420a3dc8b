"""The real server on a PostgreSQL store: webhooks are acknowledged, deduplicated, scored and
delivered through it; a database that cannot be reached stops the start with one line."""

from __future__ import annotations

from pathlib import Path

from tests.cli import one_line_error, run
from tests.eventually import eventually
from tests.server import Server, entries, payload, with_api
from tests.standin import StandIn, free_port


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
