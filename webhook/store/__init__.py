"""The durable queue of webhooks: what the store promises, whatever the database.

This package holds the contract (here) and one module per backend: :mod:`.sqlite`, with its
writer thread (:mod:`.sqlite_writer`) and its server lock (:mod:`.sqlite_lock`) beside it.
:func:`open_store` picks the backend from the URL and imports only that one.

Policy:

- ``add`` returns only once the webhook is committed to disk; only then may the receiver answer
  2xx. A ``request_id`` that is already stored is reported as a duplicate and never queued twice.
- Work has two stages. A webhook is first *scored* (promptly, so a large body's short-lived URL
  is still valid and the judge sees fresh traffic), then *posted* at the pace the API allows.
  The backlog waits here, on disk, not in memory.
- Delivery is at-least-once. ``claim`` hands out *leases*: a claimed webhook becomes claimable
  again when its lease runs out, so a crash never strands work. A serving process opens the
  store with ``serving=True``: if no other server is alive on it, every lease is orphaned (its
  holder crashed) and is taken back at once, so a restart after a crash does not wait out the
  leases. While other servers are alive, their leases are left to run out.
- Each outcome (scored, delivered, retry later, dead) is one write. The scores are stored when
  computed, so a retry posts the same scores without scoring again.
- ``release`` gives leases back (at shutdown, or when the rate limit has no room) with the calls
  already posted, so the work is picked up again without repeating a call that succeeded.
- ``ping`` fails at once while the last write of webhooks failed, so readiness never lags the
  503s; a file deleted or replaced under the server is such a failure, and never acknowledged.

States: ``pending`` (waiting until ``available_at``), ``leased`` (being worked on until its lease
expires), ``done`` (delivered, or nothing to deliver) and ``dead`` (a dead letter, kept until
retried or purged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import parse_qsl

__all__ = [
    "FEEDBACK_POSTED",
    "SCORES_POSTED",
    "STATES",
    "DeadLetter",
    "Job",
    "QueueStats",
    "Stage",
    "Store",
    "open_store",
    "sqlite_path",
]

STATES = ("pending", "leased", "done", "dead")
Stage = Literal["score", "post"]

# Bits of Job.posted: what one webhook has already delivered.
SCORES_POSTED = 1
FEEDBACK_POSTED = 2


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed webhook."""

    request_id: str
    body: bytes | None
    attempts: int  # tries of the current stage, this one included (scoring resets it)
    received_at: float
    scores: dict[str, int] | None  # None until scored
    feedback: bool | None = None  # the rating to post, if a feedback rule gave one
    posted: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    request_id: str
    attempts: int
    last_status: int | None
    last_error: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    counts: dict[str, int]
    oldest_pending_at: float | None


class Store(Protocol):
    async def open(self, *, serving: bool = False) -> None:
        """Open (creating the schema). ``serving``: this process will claim work; it counts as
        a live server until closed, and takes back every lease if no other server is alive."""

    async def close(self) -> None: ...

    async def add(self, request_id: str, body: bytes) -> bool:
        """Commit a webhook durably. True if new, False if ``request_id`` was already stored."""

    async def claim(self, stage: Stage, limit: int, lease_seconds: float) -> list[Job]:
        """Lease up to ``limit`` webhooks due for ``stage``, oldest first."""

    async def scored(
        self, request_id: str, scores: dict[str, int], feedback: bool | None, finished: bool
    ) -> None:
        """Record the scores; ``finished`` when there is nothing to post (or a dry run)."""

    async def complete(self, request_id: str, status: int | None) -> None:
        """Mark delivered (``status`` is the API's last answer)."""

    async def retry(
        self, request_id: str, delay: float, status: int | None, error: str, posted: int
    ) -> None:
        """Return a webhook to the queue, due again after ``delay`` seconds."""

    async def bury(self, request_id: str, status: int | None, error: str, posted: int) -> None:
        """Move a webhook to the dead letters."""

    async def enqueue_scores(self, request_id: str, scores: dict[str, int]) -> bool:
        """Queue already-computed scores for delivery (backfill), so the relay posts them as
        they are, under the same retries and rate limit, without scoring again.

        A new ``request_id`` is inserted as pending; a finished one (done or dead) is re-opened
        with fresh attempts and age, unless it is done with these very scores already posted.
        Returns False, changing nothing, for that case and for work already pending or leased.
        """

    async def release(self, posted: Mapping[str, int], delay: float = 0.0) -> None:
        """Give leases back unfinished, due again after ``delay``; the attempt does not count.

        ``posted`` maps each request id to the calls posted under this lease (``posted`` bits),
        which are recorded so that they are never repeated.
        """

    async def log_posts(self, ended_at: list[float]) -> None:
        """Remember when API calls ended, so the rate limit holds across restarts."""

    async def recent_posts(self, since: float) -> list[float]: ...

    async def ping(self) -> None:
        """Raise unless the store accepts a durable write, at once while the last write of
        webhooks failed (until one succeeds again)."""

    async def stats(self) -> QueueStats: ...

    async def dead_letters(self, limit: int) -> list[DeadLetter]: ...

    async def requeue_dead(self, request_ids: list[str] | None) -> int:
        """Re-queue the named dead letters (all when None); returns how many."""

    async def purge_dead(self) -> int: ...

    async def prune_done(self, before: float) -> int:
        """Forget delivered webhooks finished before ``before``; returns how many.

        Their ids no longer count as duplicates after that: the retention is the dedup window.
        """


def sqlite_path(url: str) -> str | None:
    """The file a ``sqlite:///PATH[?options]`` URL names (relative to the working directory),
    or None for another scheme."""
    if not url.startswith("sqlite:///"):
        return None
    return url.removeprefix("sqlite:///").partition("?")[0]


def open_store(url: str) -> Store:
    """Pick the store from the URL's scheme."""
    path = sqlite_path(url)
    if path is not None:
        from webhook.store.sqlite import SQLiteStore

        options = dict(parse_qsl(url.partition("?")[2]))
        return SQLiteStore(path, busy_timeout_ms=int(options.get("busy_timeout_ms", 10_000)))
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
