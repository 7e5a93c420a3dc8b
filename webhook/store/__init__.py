"""The durable queue of webhooks: what the store promises, whatever the database.

This package holds the contract (here) and the backends: :mod:`.sqlite`, with its writer thread
(:mod:`.sqlite_writer`), schema (:mod:`.sqlite_schema`), read path (:mod:`.sqlite_reader`),
posting budget (:mod:`.sqlite_budget`) and server lock (:mod:`.sqlite_lock`) beside it.
:func:`open_store` and :func:`open_reader` pick the backend from the URL and import only that one.
The contract is written for several processes, on one machine or many, sharing one database.

Policy:

- ``add`` returns only once the webhook is committed durably; only then may the receiver answer
  2xx. A ``request_id`` that is already stored is reported as a duplicate and never queued twice,
  whichever process stored it first.
- Work has two stages. A webhook is first *scored* (promptly, so a large body's short-lived URL
  is still valid and the judge sees fresh traffic), then *posted* at the pace the API allows.
  The backlog waits here, in the database, not in memory.
- Delivery is at-least-once. ``claim`` hands out *leases*, each with a token. A claimed webhook
  becomes claimable again when its lease runs out, so a crash never strands work; ``extend``
  keeps a lease while its work is still in progress.
- Fencing: an outcome names the lease it was worked under, and applies only while that token
  still holds, that is until another claim took the webhook (after the lease ran out), or an
  outcome already ended the lease. ``record`` says, per outcome, whether it applied; one that
  did not is dropped by the caller: someone else owns the webhook now.
- Each outcome (scored, delivered, retry later, dead, released, skipped) is one typed value that a
  backend applies in one statement; ``record`` applies a batch of them in one transaction.
  Scores are stored when computed, so a retry posts the same scores without scoring again.
- What a webhook has already posted is a :data:`Posted` set the store keeps: an outcome carries
  the calls made under its lease, and they are never made again.
- A serving process opens the store with ``serving=True``: if no other server is alive on it,
  every lease is orphaned (its holder stopped) and is taken back at once, so a restart after a
  crash does not wait out the leases.
- The posting budget (:class:`PostBudget`) is shared by every process on the store.
- ``subscribe`` wakes the relay when work may have become due, wherever it was stored.
- Every webhook has an :data:`Origin`: a live webhook, one the reconciliation sweep found
  missing (``reconciled``), or one queued by ``backfill``. Both stages claim live work first,
  then reconciled, then backfilled, so neither a sweep nor a backfill ever delays live scores;
  and the post stage, within one origin, posts scores before feedback-only calls.
- The posting budget gives each :data:`Priority` of call a reserve it may not take (see
  :func:`reserve`): the classes above it always find room.
- Only one process sweeps at a time (:meth:`Store.claim_sweep`); the sweep's progress is kept
  in the store, so a restart resumes it. A webhook whose scores Helicone does not show is
  re-posted once at most (:meth:`Store.confirm`).
- Reads for people and metrics (:class:`Reader`) never wait for a writer.
- ``ping`` fails at once while the last write of webhooks failed, so readiness never lags the
  503s.
- Failures a caller reports to a person are :class:`StoreError` (one line, no driver types).

States: ``pending`` (waiting until ``available_at``), ``leased`` (being worked on until its lease
expires), ``done`` (delivered, nothing to deliver, or skipped) and ``dead`` (a dead letter, kept
until retried or purged).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "CALLS",
    "ORIGINS",
    "PRIORITIES",
    "STATES",
    "Call",
    "Dead",
    "DeadLetter",
    "Delivered",
    "Entry",
    "Flow",
    "Job",
    "Lease",
    "NoStore",
    "Origin",
    "Outcome",
    "PostBudget",
    "Posted",
    "Priority",
    "QueueStats",
    "Reader",
    "Released",
    "Retry",
    "ScoreCounts",
    "Scored",
    "Skipped",
    "Slot",
    "Stage",
    "Store",
    "StoreError",
    "SweepLease",
    "Tenure",
    "fold_score_counts",
    "is_postgres",
    "open_reader",
    "open_store",
    "reserve",
    "sqlite_path",
    "url_without_password",
    "with_connection_settings",
]

STATES = ("pending", "leased", "done", "dead")
Stage = Literal["score", "post"]

Call = Literal["scores", "feedback"]
"""One API call a webhook may need: its scores, and a feedback rating if a rule gave one."""
CALLS: tuple[Call, ...] = ("scores", "feedback")
Posted = frozenset[Call]
"""The calls a webhook has already made successfully; they are never made again."""

Origin = Literal["live", "reconciled", "backfill"]
"""Where a webhook came from: Helicone's webhook, the reconciliation sweep (Helicone logged it
and the webhook never reached us), or ``backfill``. Claimed in this order in both stages."""
ORIGINS: tuple[Origin, ...] = ("live", "reconciled", "backfill")

Priority = Literal["live", "feedback", "reconciled", "query", "backfill"]
"""The class of one API call, highest first: a live webhook's scores, a live webhook's
feedback, any call for a reconciled webhook, the sweep's own queries, backfill."""
PRIORITIES: tuple[Priority, ...] = ("live", "feedback", "reconciled", "query", "backfill")


def reserve(priority: Priority, limit: int) -> int:
    """Places of a budget of ``limit`` that a call of ``priority`` leaves to the classes above
    it: it may take one only while more than this many are free.

    Class *k* (live = 0 ... backfill = 4) reserves ``k * max(1, limit // 20)``: live calls can
    use the whole window, and under a sustained backlog of live posts the lower classes get
    nothing. Never the whole budget, though: with a tiny limit (under 5 calls) every class may
    still use the last place of an otherwise empty window, or it could never call at all.
    """
    k = PRIORITIES.index(priority)
    return max(0, min(k * max(1, limit // 20), limit - 1))


class StoreError(Exception):
    """A failure to report to a person as one line: the store cannot be opened, or is gone."""


class NoStore(StoreError):
    """There is no store at that URL (the read and management commands never create one)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A claim on one webhook: ``token`` is new for every claim."""

    request_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed webhook."""

    lease: Lease
    body: bytes | None  # None in the post stage (its scores are stored)
    attempts: int  # tries of the current stage, this one included (scoring resets it)
    received_at: float
    scores: dict[str, int] | None  # None until scored
    feedback: bool | None = None  # the rating to post, if a feedback rule gave one
    posted: Posted = frozenset()
    origin: Origin = "live"
    logged_at: float | None = None  # when Helicone logged it, where known (not a live webhook)

    @property
    def logged(self) -> float:
        """When Helicone logged the request: as given, else when the webhook was received
        (Helicone sends it about 30 s after logging)."""
        return self.received_at if self.logged_at is None else self.logged_at

    @property
    def request_id(self) -> str:
        return self.lease.request_id


# Outcomes: what became of a leased webhook. Each applies only while its lease holds.


@dataclass(frozen=True, slots=True)
class Scored:
    """The scores are computed. ``finished`` when there is nothing to post (or a dry run): the
    webhook is done; otherwise it waits for the post stage, due now, with fresh attempts. The
    body is kept until the webhook is done."""

    lease: Lease
    scores: dict[str, int]
    feedback: bool | None
    finished: bool


@dataclass(frozen=True, slots=True)
class Delivered:
    """Every call was made: done. ``status`` is the API's last answer."""

    lease: Lease
    status: int | None
    posted: Posted


@dataclass(frozen=True, slots=True)
class Retry:
    """The attempt failed: due again after ``delay`` seconds, with the calls made so far."""

    lease: Lease
    delay: float
    status: int | None
    error: str
    posted: Posted


@dataclass(frozen=True, slots=True)
class Dead:
    """Given up: a dead letter, kept until retried or purged."""

    lease: Lease
    status: int | None
    error: str
    posted: Posted


@dataclass(frozen=True, slots=True)
class Released:
    """Given back unfinished (shutdown, or no room in the budget), due after ``delay``; the
    attempt does not count. The calls made under the lease are kept."""

    lease: Lease
    posted: Posted = frozenset()
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Skipped:
    """Finished without posting, and not a dead letter: sampled out, or older than Helicone's
    30-day scoring window (it would drop the scores). Done, with ``reason`` kept (see
    :attr:`Entry.skipped`); from either stage. The body is dropped."""

    lease: Lease
    reason: str


Outcome = Scored | Delivered | Retry | Dead | Released | Skipped


@dataclass(frozen=True, slots=True)
class DeadLetter:
    request_id: str
    attempts: int
    last_status: int | None
    last_error: str | None
    received_at: float


@dataclass(frozen=True, slots=True)
class ScoreCounts:
    """What :meth:`Reader.score_counts` read: per scorer name, per value, how many webhooks."""

    counts: dict[str, dict[int, int]]
    webhooks: int  # scored live webhooks read: ``most`` when there were more


def fold_score_counts(rows: Iterable[Sequence[Any]]) -> ScoreCounts:
    """A backend's score-count rows: ``(name, value, count)``, and one ``(None, None, read)``."""
    counts: dict[str, dict[int, int]] = {}
    read = 0
    for name, value, n in rows:
        if name is None:
            read = int(n)
        else:
            counts.setdefault(str(name), {})[int(value)] = int(n)
    return ScoreCounts(counts, read)


@dataclass(frozen=True, slots=True)
class QueueStats:
    counts: dict[str, int]  # every state in STATES, zero included
    oldest_pending_at: float | None  # received_at of the oldest webhook not yet finished


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored webhook as the read path sees it (for ``queue``, diagnostics and tests);
    never its body."""

    request_id: str
    state: str
    attempts: int
    received_at: float
    available_at: float
    scores: dict[str, int] | None
    feedback: bool | None
    posted: Posted
    origin: Origin
    last_status: int | None
    last_error: str | None
    finished_at: float | None
    has_body: bool = field(default=False)
    unconfirmed: bool = False  # re-posted once because Helicone did not show its scores
    skipped: str | None = None  # why it finished as :class:`Skipped`, None otherwise

    @property
    def backfill(self) -> bool:
        return self.origin == "backfill"


@dataclass(frozen=True, slots=True)
class Flow:
    """What goes in and out of the queue, for drain-time reporting (:meth:`Reader.flow`)."""

    window: float
    arrived: int  # webhooks added with origin "live" in the last ``window`` seconds
    posted: int  # API calls ended in the last ``window`` seconds (see Reader.flow)
    backlog: int  # webhooks not finished (pending or leased), any stage
    backlog_calls: int  # API calls those still need (an unscored webhook counts 1)
    unconfirmed: int  # stored webhooks ever re-posted as unconfirmed
    skipped: int  # stored webhooks finished as Skipped


@dataclass(frozen=True, slots=True)
class SweepLease:
    """The right to run the reconciliation sweep, held by one process at a time."""

    token: str
    since: float | None  # where the last sweep ended (epoch s), None if none ever did
    created: float  # when the store was created (epoch s): the first sweep starts there


@dataclass(frozen=True, slots=True)
class Slot:
    """A place in the posting budget, held by one API call."""

    token: str


class PostBudget(Protocol):
    """The API's budget, shared by every process on the store: at most ``limit`` calls in any
    ``window`` seconds, and after a 429 no call at all, from any process, until its pause ends.

    A call holds its place from :meth:`take` until ``window`` seconds after :meth:`spent`: the
    server has seen the call by then, whatever the network delayed, so no window of the
    server's clock holds more than ``limit`` of them. A place taken and never spent (its
    process died) is counted as spent when taken, so it frees on its own. The times are kept
    by the store, so a restart does not grant a fresh budget.
    """

    limit: int
    window: float

    async def room(self, priority: Priority = "live") -> int:
        """Calls of ``priority`` that may start now: the places free beyond its
        :func:`reserve` (0 while paused)."""

    async def take(self, priority: Priority = "live") -> Slot | None:
        """A place for one call of ``priority`` now, or None without waiting when there is
        none: fewer than its :func:`reserve` plus one free, or a pause. Atomic across
        processes: two never both take the last place."""

    async def spent(self, slot: Slot) -> None:
        """The call holding ``slot`` has ended, now. Its end is written without waiting (the
        place stays held until then, never counted short); :meth:`settle` waits for it."""

    async def settle(self) -> None:
        """Wait until every end recorded by :meth:`spent` is written (or failed, logged)."""

    async def pause(self, seconds: float) -> None:
        """A 429: no call from any process for ``seconds`` (a longer pause already set wins)."""

    async def wait_time(self, priority: Priority = "live") -> float:
        """Seconds until a place for ``priority`` may free, as far as is known now (0 when one
        is free)."""


class Reader(Protocol):
    """The read path: it never waits for a writer, and never creates a store."""

    async def stats(self) -> QueueStats: ...

    async def dead_letters(self, limit: int, *, newest: bool = False) -> list[DeadLetter]:
        """The dead letters, the longest-dead first; with ``newest``, the most recently dead
        first (by when each became one)."""

    async def entries(self, request_ids: Sequence[str] | None = None) -> dict[str, Entry]:
        """Stored webhooks by request id (the named ones that exist, or all)."""

    async def flow(self, window: float) -> Flow:
        """The queue's flow over the last ``window`` seconds, and its backlog now, from counts
        over indexes (fast on a large queue).

        ``posted`` counts the records of API calls the budget keeps: at least the last 15
        minutes of them (an hour on SQLite); for a longer ``window`` it counts only those, so
        divide by ``min(window, 900)`` for a rate. A call still in flight counts from when it
        was taken on SQLite, once ended on PostgreSQL. ``unconfirmed`` and ``skipped`` count the
        webhooks still stored (``prune_done`` forgets them with the rest)."""

    async def score_counts(self, since: float, most: int) -> ScoreCounts:
        """Per scorer name, per value, how many of the latest ``most`` live webhooks received
        at or after ``since`` (epoch s) got that value: ``{"vocabulary_diversity": {67: 12,
        100: 3}}``. Only live webhooks with scores count (not reconciled or backfilled ones,
        nor the unscored), in any state, while stored (``prune_done`` forgets them). Read over
        the live arrivals' index, newest first, so its cost is bounded by ``most`` however busy
        the window; on an older schema it counts what that schema holds."""

    async def sweep_mark(self) -> float | None:
        """Where the last reconciliation sweep ended (epoch s: the mark
        :meth:`Store.end_sweep` records), None if none ever did."""

    async def close(self) -> None: ...


class Store(Protocol):
    async def open(self, *, serving: bool = False) -> None:
        """Open, creating or migrating the schema. ``serving``: this process will claim work;
        it counts as a live server until closed, and takes back every lease if no other server
        is alive. Raises :class:`StoreError` when it cannot be opened."""

    async def close(self) -> None: ...

    @property
    def reader(self) -> Reader:
        """The read path of this open store (closed with it)."""

    def budget(self, limit: int, window: float) -> PostBudget:
        """The posting budget shared through this store."""

    def subscribe(self, wake: Callable[[Stage], None]) -> None:
        """Call ``wake(stage)`` (on the event loop) when work for ``stage`` may have become due:
        a webhook added, scores to post recorded, dead letters re-queued, work given back; by
        this process or, for a shared database, by any other."""

    async def add(
        self,
        request_id: str,
        body: bytes,
        origin: Origin = "live",
        logged_at: float | None = None,
    ) -> bool:
        """Commit a webhook durably. True if new, False if ``request_id`` was already stored
        (whatever its origin: a reconciled request that arrived meanwhile as a webhook is a
        duplicate). Reconciled webhooks come in here too, with their origin and when Helicone
        logged them (epoch seconds; :attr:`Job.logged_at`)."""

    async def unseen(self, request_ids: Sequence[str]) -> set[str]:
        """The ids of these the store holds no row for: never stored, or pruned after the
        retention (the sweep then queues them again: keep the retention longer than the
        sweep looks back)."""

    async def claim(self, stage: Stage, limit: int, lease_seconds: float) -> list[Job]:
        """Lease up to ``limit`` webhooks due for ``stage``, each under a new token.

        By origin (live, reconciled, backfill), then in the post stage those that still need
        their scores posted before those that only need their feedback, then oldest due first.
        An expired lease is due: claiming it again counts an attempt and ends the old token."""

    async def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[bool]:
        """Hold these leases ``lease_seconds`` from now; per lease, whether it still held."""

    def alive_until(self, claimed: float) -> float:
        """Until when (``time.monotonic()``) no other process can take a lease this one claimed
        at ``claimed`` (the time the claim was sent) for this one having stopped: the send time
        of its last heartbeat that landed, plus the takeover time; -infinity if its heartbeats
        lapsed since (others may have taken that lease already); infinity where a lease ends
        only by running out. Its own end is the caller's to keep (see :meth:`extend`)."""

    async def record(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes in one transaction; per outcome, whether its lease still held (an
        outcome whose lease did not hold changes nothing)."""

    async def enqueue_scores(
        self, request_id: str, scores: dict[str, int], logged_at: float | None = None
    ) -> bool:
        """Queue already-computed scores for delivery (backfill), so the relay posts them as
        they are, under the same retries and budget, without scoring again. ``logged_at``:
        when Helicone logged the request (epoch seconds; :attr:`Job.logged_at`).

        A new ``request_id`` is inserted as pending; a finished one (done or dead) is re-opened
        with fresh attempts and age, unless it is done with these very scores already posted.
        Returns False, changing nothing, for that case and for work already pending or leased.
        Safe against concurrent writers (one statement, or one transaction that locks the row).
        """

    async def confirm(
        self, landed: Mapping[str, frozenset[str]], posted_before: float
    ) -> list[str]:
        """Re-post, once ever, the scores Helicone does not show.

        ``landed``: request id -> names of the scores Helicone shows applied (from the sweep's
        listing). Each of these webhooks that is done (not skipped), has posted its scores,
        finished before ``posted_before`` (epoch s: Helicone applies scores with a delay),
        has a stored score name missing from ``landed[id]``, and was never re-posted as
        unconfirmed, is re-opened for the post stage: pending, due now, fresh attempts, its
        scores no longer posted (its feedback stays posted: never sent twice), and marked
        unconfirmed, so it is re-posted at most once. Returns those ids. One transaction,
        re-checking each condition in it, so concurrent sweeps never re-open one twice."""

    async def claim_sweep(self, lease_seconds: float) -> SweepLease | None:
        """Take the sweep lease for ``lease_seconds`` if it is free or expired, else None:
        only one process sweeps at a time."""

    async def end_sweep(self, lease: SweepLease, until: float | None) -> bool:
        """Record where the sweep ended (epoch s; None leaves the mark as it was) and free the
        lease. False, changing nothing, if it no longer held (it expired and was taken); an
        expired lease nobody took still holds."""

    async def ping(self) -> None:
        """Raise unless the store accepts a durable write, at once while the last write of
        webhooks failed (until one succeeds again)."""

    async def requeue_dead(self, request_ids: Sequence[str] | None) -> int:
        """Re-queue the named dead letters (all when None), due now with fresh attempts;
        returns how many."""

    async def retry_now(self) -> int:
        """Make due now every webhook waiting out the delay of a retried post whose last call
        got no answer, a 408 or a 5xx: the API answers again, and the delays that grew while
        it was down would only hold the backlog back (the budget sets the pace). Not one
        waiting after a 429 (the pause holds those) or released for want of room. Attempts
        are unchanged. A batch a transaction, so no write waits long behind it; returns how
        many."""

    async def purge_dead(self) -> int:
        """Delete every dead letter for good; returns how many."""

    async def prune_done(self, before: float) -> int:
        """Forget delivered webhooks finished before ``before``; returns how many.

        Their ids no longer count as duplicates after that: the retention is the dedup window.
        Dead letters and unfinished work are never pruned.
        """


def sqlite_path(url: str) -> str | None:
    """The file a ``sqlite:///PATH[?options]`` URL names (relative to the working directory),
    or None for another scheme."""
    if not url.startswith("sqlite:///"):
        return None
    return url.removeprefix("sqlite:///").partition("?")[0]


def is_postgres(url: str) -> bool:
    """A PostgreSQL URL: ``postgresql://`` or ``postgres://`` (libpq's, with the store's own
    options in the query string; see :mod:`.postgres`)."""
    return url.startswith(("postgresql://", "postgres://"))


def url_without_password(url: str) -> str:
    """The URL as messages show it: a password in it is ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def with_connection_settings(
    url: str,
    *,
    pool_size: int | None = None,
    connect_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> str:
    """The URL with the connection settings as its options: a setting given (not None) beats
    the URL's own option, one not given leaves it (or the store's default).

    Only a PostgreSQL URL takes them (``pool_max``, ``connect_timeout``, ``statement_timeout``):
    SQLite has no pool, no connection to wait for and no server, so its URL is returned as it
    is (its lock wait stays the URL option ``busy_timeout_ms``).
    """
    if not is_postgres(url):
        return url
    given = {
        "pool_max": pool_size,
        "connect_timeout": connect_timeout,
        "statement_timeout": statement_timeout,
    }
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query |= {k: str(v) for k, v in given.items() if v is not None}
    return urlunsplit(parts._replace(query=urlencode(query)))


def open_store(url: str) -> Store:
    """Pick the store from the URL's scheme (not opened yet)."""
    path = sqlite_path(url)
    if path is not None:
        from webhook.store.sqlite import SQLiteStore

        options = dict(parse_qsl(url.partition("?")[2]))
        return SQLiteStore(path, busy_timeout_ms=int(options.get("busy_timeout_ms", 10_000)))
    if is_postgres(url):
        from webhook.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


async def open_reader(url: str) -> Reader:
    """The read path of the store at ``url``, opened, without a writer and without creating
    anything: :class:`NoStore` when there is none, :class:`StoreError` when it cannot be read."""
    path = sqlite_path(url)
    if path is not None:
        from webhook.store.sqlite_reader import SQLiteReader

        return await SQLiteReader.open(path)
    if is_postgres(url):
        from webhook.store.postgres import PostgresReader

        return await PostgresReader.open(url)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")


class Tenure:
    """Until when this process surely still holds one claimed job's lease, by its own clock.

    The lease runs from when the claim, or the last extend that held, was *sent*: the database
    started it later, so this ends first. And never past the store's
    :meth:`Store.alive_until`: the time after which other instances could take
    over the leases of this one as a stopped server's (its heartbeats failing to land).
    """

    __slots__ = ("_store", "claimed", "until")

    def __init__(self, store: Store, claimed: float, lease: float) -> None:
        self._store, self.claimed, self.until = store, claimed, claimed + lease

    def renew(self, sent: float, lease: float) -> None:
        self.until = max(self.until, sent + lease)

    def lose(self) -> None:
        self.until = -math.inf

    def left(self) -> float:
        """Seconds left (negative once it may have ended)."""
        return min(self.until, self._store.alive_until(self.claimed)) - time.monotonic()
