"""The runner's isolation: exceptions, timeouts, bad values, async scorers, stuck threads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from scorers import Context, Outcome, Runner, Scorer, run_scorers
from scorers.pool import Pool

CTX = Context.from_payload(
    {"request_id": "rid-1", "response_body": {"choices": [{"message": {"content": "hi"}}]}}
)


def make(name: str, func: Any, **kw: Any) -> Scorer:
    return Scorer(name, func, f"test scorer {name}", **kw)


def run(scorers: list[Scorer], runner: Runner | None = None, limit: float = 5.0) -> Outcome:
    return asyncio.run(run_scorers(scorers, CTX, scorer_timeout=limit, runner=runner))


def boom(ctx: Context) -> int:
    raise RuntimeError("kaput")


def test_an_exception_drops_only_that_score(caplog: pytest.LogCaptureFixture) -> None:
    def slow(ctx: Context) -> int:
        time.sleep(0.05)
        raise RuntimeError("late")

    scorers = [make("ok", lambda c: 1), make("boom", boom), make("two", lambda c: 2)]
    outcome = run([*scorers, make("slow", slow)])
    assert outcome.scores == {"ok": 1, "two": 2}
    assert outcome.errors == {"boom": "RuntimeError: kaput", "slow": "RuntimeError: late"}
    # Each scorer is timed on its own, a failed one too: the slow one's time is its own sleep.
    assert set(outcome.durations) == {"ok", "boom", "two", "slow"}
    assert all(isinstance(d, float) and d >= 0 for d in outcome.durations.values())
    assert outcome.durations["slow"] >= 0.05
    assert "scorer boom failed (request_id=rid-1): RuntimeError: kaput" in caplog.text


def test_floats_and_junk_are_refused_and_logged_with_the_scorer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome = run(
        [
            make("ratio", lambda c: 0.5),
            make("several", lambda c: {"a": 1, "b": 2.5, "c": True, "d": "x"}),
            make("huge", lambda c: 2**64),
            make("none", lambda c: None),
        ]
    )
    assert outcome.scores == {"a": 1, "c": 1}
    assert set(outcome.errors) == {"ratio", "several", "huge"}
    assert "scorer ratio returned float for 'ratio'" in caplog.text
    assert "scorer several returned float for 'b'" in caplog.text


def test_a_duplicate_score_name_keeps_the_first() -> None:
    outcome = run([make("first", lambda c: {"x": 1}), make("second", lambda c: {"x": 2})])
    assert outcome.scores == {"x": 1}
    assert "second" in outcome.errors


def test_async_scorers_run_with_their_own_timeout() -> None:
    async def quick(ctx: Context) -> int:
        await asyncio.sleep(0)
        return 7

    async def sleepy(ctx: Context) -> int:
        await asyncio.sleep(30)
        return 1

    async def failing(ctx: Context) -> int:
        raise ValueError("no")

    outcome = run(
        [make("quick", quick), make("sleepy", sleepy), make("failing", failing)], limit=0.2
    )
    assert outcome.scores == {"quick": 7}
    assert outcome.errors["sleepy"] == "timed out after 0.2s"
    assert outcome.errors["failing"] == "ValueError: no"
    # A scorer's own timeout wins over the default.
    outcome = run([make("sleepy", sleepy, timeout=0.1)], limit=60)
    assert outcome.errors == {"sleepy": "timed out after 0.1s"}


def test_a_sync_callable_returning_a_coroutine_is_awaited() -> None:
    async def inner() -> int:
        return 3

    assert run([make("wrapped", lambda c: inner())]).scores == {"wrapped": 3}


def test_sync_scorers_run_off_the_event_loop() -> None:
    seen: list[str] = []

    def where(ctx: Context) -> int:
        seen.append(threading.current_thread().name)
        return 1

    run([make("where", where)], runner=Runner(Pool(name="probe")))
    assert seen
    assert seen[0].startswith("probe-")


def test_a_stuck_sync_scorer_times_out_and_the_rest_still_score(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    finished = threading.Event()

    def stuck(ctx: Context) -> int:
        release.wait(30)
        finished.set()
        return 1

    runner = Runner(Pool(size=1, name="stuck"))
    scorers = [make("before", lambda c: 1), make("stuck", stuck), make("after", lambda c: 2)]
    outcome = run(scorers, runner=runner, limit=0.3)
    # "after" was queued behind the stuck one on the only thread; it ran on a replacement.
    assert outcome.scores == {"before": 1, "after": 2}
    assert outcome.errors == {"stuck": "timed out after 0.3s"}
    assert outcome.durations["stuck"] == 0.3

    # While the late call still runs, the scorer is skipped rather than piling up threads.
    outcome = run(scorers, runner=runner, limit=0.3)
    assert outcome.scores == {"before": 1, "after": 2}
    assert outcome.errors == {"stuck": "skipped: an earlier call is still running late"}
    assert "stuck" not in outcome.durations

    release.set()
    assert finished.wait(10)
    for _ in range(200):  # the late end is recorded by the stuck thread right after it returns
        with caplog.at_level(logging.INFO, logger="scorers"):
            outcome = run(scorers, runner=runner, limit=5)
        if outcome.scores == {"before": 1, "stuck": 1, "after": 2}:
            break
        threading.Event().wait(0.02)
    assert outcome.scores == {"before": 1, "stuck": 1, "after": 2}
    assert outcome.errors == {}


def test_pool_threads_are_daemons() -> None:
    pool = Pool(size=2, name="daemon")
    names = [pool.submit(lambda: threading.current_thread()).result(5) for _ in range(3)]
    assert all(t.daemon for t in names)


def test_no_scorers_no_scores() -> None:
    assert run([]) == Outcome()


def test_a_scorer_calling_sys_exit_only_fails_itself() -> None:
    def bye(ctx: Context) -> int:
        raise SystemExit(3)

    outcome = run([make("bye", bye), make("after", lambda c: 1)])
    assert outcome.scores == {"after": 1}
    assert outcome.errors == {"bye": "SystemExit: 3"}
