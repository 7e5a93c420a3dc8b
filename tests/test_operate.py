"""Operating the service: the queue CLI, /metrics, structured logs, scorer rules."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import orjson
import pytest

from tests.cli import Completed, run
from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.metrics import metric
from tests.server import SECRET, Server, payload
from tests.standin import API_KEY, Injected, StandIn
from tests.stores import BACKENDS


def queue_cli(server: Server, *args: str) -> Completed:
    """``queue`` on the server's store, with the server's settings but not its secret."""
    env = {k: v for k, v in server.env.items() if k != "HELICONE_WEBHOOK_SECRET"}
    return run(server.workdir, env, "queue", *args)


@pytest.mark.parametrize("store", BACKENDS)
def test_queue_cli_lists_retries_and_purges_dead_letters_while_serving(
    make_server: ServerFactory, standin: StandIn, store: str
) -> None:
    server = make_server(store=store)
    standin.fail_next(*[Injected(400, {"data": None, "error": "nope"})] * 3)
    dead = [str(uuid.uuid4()) for _ in range(3)]
    for rid in dead:
        server.post(payload(rid))
    server.wait_rows(lambda rows: all(rows[r]["state"] == "dead" for r in dead))

    summary = queue_cli(server)
    assert summary.returncode == 0, summary.stderr
    assert re.search(r"^dead\s+3$", summary.stdout, re.M)
    assert "oldest pending: -" in summary.stdout
    counts = orjson.loads(queue_cli(server, "--json").stdout)["counts"]
    assert counts == {"pending": 0, "leased": 0, "done": 0, "dead": 3}

    listing = queue_cli(server, "dead")
    for rid in dead:
        assert re.search(rf"^{rid}\s+1\s+400\s+\S+\s+nope$", listing.stdout, re.M), listing.stdout

    # Retry one by id: the stand-in now accepts it, and the running server delivers it.
    retried = queue_cli(server, "retry", dead[0])
    assert (retried.returncode, retried.stdout.strip()) == (0, "re-queued 1 dead letter(s)")
    standin.wait_for(lambda: dead[0] in standin.posted_ids())

    unknown = queue_cli(server, "retry", "no-such-id")
    assert unknown.returncode == 1
    assert "1 of the given ids are not dead letters" in unknown.stderr
    assert queue_cli(server, "retry").returncode == 2  # neither ids nor --all

    refused = queue_cli(server, "purge", "--dead")
    assert refused.returncode == 2
    assert "deletes 2 dead letter(s) for good; add --yes" in refused.stderr
    assert queue_cli(server, "purge").returncode == 2
    purged = queue_cli(server, "purge", "--dead", "--yes")
    assert purged.stdout.strip() == "purged 2 dead letter(s)"
    assert dead[1] not in server.rows()
    assert queue_cli(server, "dead").stdout.strip() == "no dead letters"

    standin.fail_next(Injected(400))
    last = str(uuid.uuid4())
    server.post(payload(last))
    server.wait_rows(lambda rows: rows[last]["state"] == "dead")
    assert queue_cli(server, "retry", "--all").stdout.strip() == "re-queued 1 dead letter(s)"
    standin.wait_for(lambda: last in standin.posted_ids())


@pytest.mark.parametrize("store", BACKENDS)
def test_queue_shows_the_backlog_age(make_server: ServerFactory, store: str) -> None:
    # Nothing answers at the API base: the webhook waits.
    server = make_server(store=store, HELICONE_API_BASE="http://127.0.0.1:9")
    assert server.post(payload()).status_code == 202
    assert re.search(r"^oldest pending: \d+s$", queue_cli(server).stdout, re.M)
    # The age grows while the webhook waits: it is read from the store, not made up.
    eventually(
        lambda: re.search(r"^oldest pending: [1-9]\d*s$", queue_cli(server).stdout, re.M),
        what="a pending age of a second or more",
        show=lambda: queue_cli(server).stdout,
    )


def test_metrics_count_outcomes_posts_and_queue(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server()
    standin.fail_next(Injected(503))
    rid = str(uuid.uuid4())
    server.post(payload(rid))
    server.post(payload(rid))
    server.post(payload(), secret="wrong")
    server.post(b"{", secret=SECRET)
    standin.wait_for(lambda: rid in standin.posted_ids())
    server.wait_rows(lambda rows: rows[rid]["state"] == "done")
    response = server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    received = "helicone_scorer_webhooks_received_total"
    assert metric(text, received, outcome="accepted") == 1
    assert metric(text, received, outcome="duplicate") == 1
    assert metric(text, received, outcome="bad_signature") == 1
    assert metric(text, received, outcome="bad_json") == 1
    assert metric(text, "helicone_scorer_scores_posted_total") == 1
    assert metric(text, "helicone_scorer_post_failures_total", status="503") == 1
    assert metric(text, "helicone_scorer_retries_total") == 1
    assert metric(text, "helicone_scorer_queue_depth", state="done") == 1
    assert metric(text, "helicone_scorer_queue_depth", state="pending") == 0
    duration = "helicone_scorer_scorer_duration_seconds_count"
    assert metric(text, duration, scorer="vocabulary_diversity") == 1
    assert metric(text, duration, scorer="word_count") == 1


def test_json_logs_one_line_per_outcome_without_bodies_or_secrets(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(SCORER_LOG_FORMAT="json")
    rid = str(uuid.uuid4())
    secret_text = "the patient's private diagnosis"
    server.post(payload(rid, secret_text))
    server.post(payload(), secret="wrong")
    standin.wait_for(lambda: rid in standin.posted_ids())
    server.wait_rows(lambda rows: rows[rid]["state"] == "done")
    assert server.terminate()
    log = server.log()
    lines = [orjson.loads(line) for line in log.splitlines() if line.strip()]  # all JSON
    mine = [line for line in lines if line.get("request_id") == rid]
    assert [line["outcome"] for line in mine] == ["posted"]  # accepted is logged at debug
    assert any(line.get("outcome") == "bad_signature" for line in lines)
    for leak in (secret_text, SECRET, API_KEY, "color_message", "\x1b["):
        assert leak not in log


def test_scorer_rules_file_filters_by_model(
    make_server: ServerFactory, standin: StandIn, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[vocabulary_diversity]\nmodels = ["gpt-4o*"]\n')
    server = make_server(SCORER_RULES_FILE=str(rules), SCORER_ENABLED="vocabulary_diversity")
    matching, other = str(uuid.uuid4()), str(uuid.uuid4())
    server.post(payload(matching))  # model gpt-4o
    body = orjson.loads(payload(other))
    body["model"] = "claude-3-5-sonnet"
    server.post(orjson.dumps(body))
    standin.wait_for(lambda: matching in standin.posted_ids())
    server.wait_rows(lambda rows: rows[other]["state"] == "done")
    assert other not in {c.request_id for c in standin.calls}
    assert server.rows()[other]["scores"] == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCORER_FEEDBACK_RULE": "score => 5"}, "invalid setting SCORER_FEEDBACK_RULE: syntax"),
        (
            {"SCORER_FEEDBACK_RULE": "__import__('os').system('true')"},
            "invalid setting SCORER_FEEDBACK_RULE: unexpected",
        ),
        ({"SCORER_RULES_FILE": "missing.toml"}, "invalid setting SCORER_RULES_FILE: missing"),
    ],
)
def test_bad_rules_stop_the_start(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run(tmp_path, {"HELICONE_WEBHOOK_SECRET": "k", **env}, "serve")
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"helicone-scorer: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_delivered_webhooks_are_forgotten_after_the_retention(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(SCORER_RETENTION_DAYS="0.00002")  # 1.7 s; pruned every 0.43 s
    standin.fail_next(Injected(400))
    dead, delivered = str(uuid.uuid4()), str(uuid.uuid4())
    server.post(payload(dead))
    server.wait_rows(lambda rows: rows[dead]["state"] == "dead")
    server.post(payload(delivered))
    standin.wait_for(lambda: delivered in standin.posted_ids())
    server.wait_rows(lambda rows: delivered not in rows)
    assert server.rows()[dead]["state"] == "dead"  # dead letters wait for a person
    # The retention is the dedup window: past it, the same id is accepted (and posted) again.
    assert server.post(payload(delivered)).status_code == 202
    standin.wait_for(lambda: len([c for c in standin.ok_calls() if c.request_id == delivered]) == 2)
