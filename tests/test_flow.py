"""The flow: drain time, the sample that fits the budget, and what is not posted at all.

The arithmetic (:func:`webhook.flow.drain`) is checked on figures; the rest on the real server:
a fixed sample, ``SCORER_SAMPLE=auto`` under a small budget, the log line and its warning, the
figures in ``queue`` and ``/metrics``, and a webhook past Helicone's 30-day window.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import orjson
import pytest

from tests.cli import run
from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.metrics import metric
from tests.server import entries, payload, wait_done
from tests.standin import API_KEY, StandIn
from tests.stores import opened
from webhook.deliver import Delivery, RetryPolicy
from webhook.flow import Drain, Sample, drain, duration
from webhook.helicone import Helicone
from webhook.sample import in_sample
from webhook.store import Entry, Flow, Tenure

MINUTE = 60.0


def flow(**counts: int) -> Flow:
    base = {"arrived": 0, "posted": 0, "backlog": 0, "backlog_calls": 0}
    return Flow(window=600.0, unconfirmed=0, skipped=0, **(base | counts))


def test_the_backlog_drains_at_what_the_budget_leaves_after_arrivals() -> None:
    # 200 calls a minute; 50 webhooks a minute arrive, each needing 1 call: 150 a minute drain.
    figures = drain(
        flow(arrived=500, posted=2000, backlog=15_000, backlog_calls=15_000), 200, 60, False
    )
    assert (figures.arriving, figures.posting, figures.capacity) == (50, 200, 200)
    assert figures.seconds == pytest.approx(100 * MINUTE)
    # Feedback counted: the backlog's own mix, 1.5 calls a webhook, so arrivals need 75 a minute.
    mixed = drain(flow(arrived=500, backlog=10_000, backlog_calls=15_000), 200, 60, True)
    assert mixed.calls_per_webhook == 1.5
    assert mixed.seconds == pytest.approx(15_000 / 125 * MINUTE)


def test_a_backlog_that_grows_never_drains_and_says_by_how_much() -> None:
    figures = drain(flow(arrived=6000, backlog=100, backlog_calls=100), 200, 60, False)
    assert figures.seconds is None  # 600 a minute arrive, 200 go out
    assert figures.growth_per_hour == pytest.approx(400 * 60)
    assert duration(figures.seconds) == "never"
    assert drain(flow(), 200, 60, True).seconds == 0  # nothing to drain
    # With no backlog to learn the mix from, a feedback rule counts two calls a webhook.
    assert drain(flow(arrived=10), 200, 60, True).calls_per_webhook == 2


def test_an_automatic_sample_fits_the_calls_into_the_budget() -> None:
    busy = drain(flow(arrived=6000), 200, 60, True)  # 600 a minute, 2 calls each: 1200 a minute
    assert busy.auto_percent() == pytest.approx(100 * 0.9 * 200 / 1200)
    assert drain(flow(arrived=60), 200, 60, False).auto_percent() == 100  # it all fits
    flood = Drain(10**6, 0, 200, 0, 0, 2, None)
    assert flood.auto_percent() == 1  # never below the floor
    sample = Sample("auto")
    sample.update(busy)
    assert (sample.active, sample.percent) == (True, 15.0)
    assert Sample(100).active is False
    assert Sample(100).fields() == {}


def test_sampling_by_request_id_is_stable_and_uniform() -> None:
    ids = [str(uuid.uuid4()) for _ in range(20_000)]
    kept = [rid for rid in ids if in_sample(rid, 30)]
    assert 0.28 < len(kept) / len(ids) < 0.32
    assert kept == [rid for rid in ids if in_sample(rid, 30)]  # the same answer every time
    assert set(kept) <= {rid for rid in ids if in_sample(rid, 60)}  # a larger sample holds it
    assert all(in_sample(rid, 100) for rid in ids[:100])
    assert not any(in_sample(rid, 0) for rid in ids[:100])


def test_a_fixed_sample_posts_the_ids_in_it_and_finishes_the_rest_as_sampled_out(
    make_server: ServerFactory, standin: StandIn
) -> None:
    server = make_server(SCORER_SAMPLE="40")
    ids = [str(uuid.uuid4()) for _ in range(30)]
    for rid in ids:
        assert server.post(payload(rid)).status_code == 202
    stored = wait_done(server.store_url, ids)
    kept = {rid for rid in ids if in_sample(rid, 40)}
    assert 0 < len(kept) < len(ids)
    eventually(lambda: standin.posted_ids() == kept, 20, what="the sample posted")
    for rid in set(ids) - kept:
        assert stored[rid].skipped == "sampled out (40% kept)"
        assert stored[rid].scores is None
    assert all(stored[rid].skipped is None for rid in kept)
    log = server.wait_for_log("outcome=sampled_out")
    assert re.search(r"delivered request_id=\S+ outcome=posted .*sample=40\.0", log)
    text = server.client.get("/metrics").text
    assert metric(text, "helicone_scorer_skipped_total", reason="sampled_out") == len(ids) - len(
        kept
    )
    assert metric(text, "helicone_scorer_sample_percent") == 40


def test_an_automatic_sample_shrinks_when_arrivals_outgrow_the_budget(
    make_server: ServerFactory, standin: StandIn
) -> None:
    # 6 calls a minute; 90 webhooks at once are 9 a minute over the ten-minute window.
    server = make_server(
        SCORER_SAMPLE="auto", SCORER_RATE_LIMIT_PER_MINUTE="6", SCORER_FLOW_REPORT_SECONDS="0.5"
    )
    ids = [str(uuid.uuid4()) for _ in range(90)]
    for rid in ids:
        assert server.post(payload(rid)).status_code == 202

    def percent() -> float:
        return metric(server.client.get("/metrics").text, "helicone_scorer_sample_percent")

    eventually(lambda: percent() == 60.0, 20, what="a sample of 90% x 6 / 9 = 60%", show=percent)
    later = [str(uuid.uuid4()) for _ in range(20)]
    for rid in later:
        assert server.post(payload(rid)).status_code == 202

    def decided() -> dict[str, Entry] | None:
        stored = entries(server.store_url)
        done = all(r in stored and (stored[r].skipped or stored[r].scores) for r in later)
        return stored if done else None

    stored = eventually(decided, 20, what="the later webhooks scored or sampled out")
    # Each is decided by its id in the sample of the moment, which its outcome names.
    for rid in later:
        reason = stored[rid].skipped
        if reason is None:
            continue
        shown = float(re.fullmatch(r"sampled out \((\S+)% kept\)", reason).group(1))  # type: ignore[union-attr]
        assert shown < 100
        assert not in_sample(rid, shown)
    assert any(stored[rid].skipped for rid in later)
    assert "sample=" in server.wait_for_log("flow: ")


def test_a_backlog_past_the_max_age_is_reported_with_a_way_out(
    make_server: ServerFactory, standin: StandIn, tmp_path: Path
) -> None:
    server = make_server(
        SCORER_RATE_LIMIT_PER_MINUTE="1",
        SCORER_MAX_AGE="120",
        SCORER_FLOW_REPORT_SECONDS="0.5",
    )
    ids = [str(uuid.uuid4()) for _ in range(12)]
    for rid in ids:
        assert server.post(payload(rid)).status_code == 202
    # 12 arrive in ten minutes: 1.2 a minute need a call each, and 1 a minute goes out.
    line = server.wait_for_log("drains in never")
    warning = next(x for x in line.splitlines() if "drains in never" in x and "WARNING" in x)
    assert "past SCORER_MAX_AGE (2 min)" in warning
    assert "SCORER_SAMPLE=auto" in warning

    # The gauges are the monitor's latest report, which may have been made before the twelfth
    # arrived (ten already never drain at 1 a minute): wait for the one that counts all twelve.
    def scraped() -> str | None:
        text = server.client.get("/metrics").text
        rate = metric(text, "helicone_scorer_arrival_rate_per_minute")
        return text if rate == pytest.approx(1.2) else None

    text = eventually(scraped, 20, what="the arrival rate of all twelve on /metrics")
    assert metric(text, "helicone_scorer_drain_seconds") == float("inf")
    assert metric(text, "helicone_scorer_backlog_calls") >= 10

    env = {k: v for k, v in server.env.items() if k != "HELICONE_WEBHOOK_SECRET"}
    shown = run(server.workdir, env, "queue")
    assert shown.returncode == 0, shown.stderr
    assert "arriving: 1.2 webhooks/min (last 10 min)" in shown.stdout
    assert "limit 1/min" in shown.stdout
    assert "drains in never" in shown.stdout
    assert "warning: the backlog drains in never, growing by 12 calls an hour" in shown.stdout
    assert "past SCORER_MAX_AGE (2 min)" in shown.stdout
    figures = orjson.loads(run(server.workdir, env, "queue", "--json").stdout)
    assert figures["drain_seconds"] is None
    assert figures["drain_past_max_age"] is True
    assert figures["arriving_per_minute"] == pytest.approx(1.2)


@pytest.mark.anyio
async def test_a_request_logged_past_helicones_30_day_window_is_not_posted(
    tmp_path: Path, standin: StandIn
) -> None:
    # Backfilled scores of a request logged 29 days ago, 29 days and a bit in Helicone's eyes by
    # now, and one of 31 days: only the younger is posted (the age is Helicone's logging time,
    # not the time it was queued).
    url = f"sqlite:///{tmp_path / 'old.db'}"
    client = Helicone(standin.base_url, API_KEY)
    now = time.time()
    async with opened(url, serving=True) as store:
        assert await store.enqueue_scores("fresh", {"word_count": 3}, logged_at=now - 29 * 86400)
        assert await store.enqueue_scores("old", {"word_count": 3}, logged_at=now - 31 * 86400)
        delivery = Delivery(store, client, store.budget(200, 60), RetryPolicy())
        for job in await store.claim("post", 2, 60):
            await delivery.post(job, Tenure(store, time.monotonic(), 60))
        stored = await store.reader.entries(["old", "fresh"])
    await client.aclose()
    assert [c.request_id for c in standin.calls] == ["fresh"]
    assert stored["fresh"].state == "done"
    assert stored["fresh"].posted == frozenset({"scores"})
    assert stored["old"].state == "done"
    assert stored["old"].skipped == (
        "older than Helicone's 30-day scoring window: it would drop the scores"
    )
    assert stored["old"].posted == frozenset()


def test_the_drain_time_counts_only_the_sample_s_share_of_arrivals() -> None:
    busy = flow(arrived=6000, backlog=1200, backlog_calls=1200)  # 600 a minute, 1 call each
    unsampled = drain(busy, 200, 60, False)
    assert unsampled.seconds is None
    assert unsampled.late(86400)
    auto = drain(busy, 200, 60, False, Sample("auto"))
    assert auto.sample == pytest.approx(30)  # 90% of 200 over 600
    assert auto.seconds == pytest.approx(1200 / 20 * MINUTE)  # 200 - 180 a minute left over
    assert not auto.late(86400)
    fixed = drain(busy, 200, 60, False, Sample(10))
    assert fixed.seconds == pytest.approx(1200 / 140 * MINUTE)
    # Already automatic: the advice does not suggest it again.
    assert "SCORER_SAMPLE=auto" in unsampled.advice(60, Sample())
    assert "SCORER_SAMPLE=auto" not in drain(busy, 20, 60, False, Sample("auto")).advice(
        60, Sample("auto")
    )
