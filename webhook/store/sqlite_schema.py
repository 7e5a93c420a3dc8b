"""The SQLite schema, its version and its migrations, and how a :data:`Posted` set is stored.

``PRAGMA user_version`` holds the schema version. A database of an older version is migrated
in place when a store opens it (in the writer's transaction, so a failed migration changes
nothing); a newer one stops the start, since this build cannot know what it means. The read
path (:mod:`.sqlite_reader`) opens any version it can read without migrating it.

Versions:

1. The first: ``webhooks``, ``post_log`` and ``meta``.
2. ``webhooks.lease``: the token of the current lease, NULL when none (fencing).
3. ``webhooks.origin`` (0 live, 1 reconciled, 2 backfill: :data:`ORIGINS` order) takes the
   place of ``backfill``; ``unconfirmed`` (re-posted once, see ``Store.confirm``) and
   ``skipped`` (the reason of a :class:`~webhook.store.Skipped`); ``logged_at`` (when Helicone
   logged a reconciled or backfilled request: its 30-day window); the claim indexes lead with
   the origin; indexes for the flow's counts; ``meta.created``, where the reconciliation
   sweep's first window starts (see :func:`created`).
4. ``counts``: one row of counters (webhooks by state, the backlog's calls by kind, the
   unconfirmed and the skipped) that triggers on ``webhooks`` keep in the transaction of every
   insert, update and delete, whichever build's statement made it, so ``queue`` and the
   flow read their counts in constant time rather than counting a backlog of millions (SQLite
   cannot count over a partial index without reading every row it holds); and
   ``webhooks_waiting`` (``received_at`` of the unfinished), for the oldest one's age; and
   ``post_bound``, a bound on the posting budget's places held, kept by triggers on
   ``post_log`` (see .sqlite_budget), so a place is taken without counting the window.

Expand, then contract: version 3 keeps ``backfill`` (with its default; a fresh store has it
too, so one version is one schema), which this build never reads or writes, because during a
rolling restart a server of the previous build still claims from the same file, ordering by
it. A later version drops it, once no build that reads it can still be running.
"""

from __future__ import annotations

import sqlite3
import time

from webhook.helicone import SCORING_WINDOW
from webhook.store import CALLS, ORIGINS, Origin, Posted, StoreError

__all__ = [
    "READABLE",
    "SCHEMA_VERSION",
    "bits",
    "create_or_migrate",
    "created",
    "origin_code",
    "origin_name",
    "posted",
    "version_problem",
]

SCHEMA_VERSION = 4
READABLE = (1, 2, 3, 4)  # versions the read path understands (see .sqlite_reader for the older)

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    request_id   TEXT PRIMARY KEY,
    body         BLOB,
    state        TEXT NOT NULL DEFAULT 'pending',
    received_at  REAL NOT NULL,
    available_at REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    scores       TEXT,
    feedback     INTEGER,
    posted       INTEGER NOT NULL DEFAULT 0,
    backfill     INTEGER NOT NULL DEFAULT 0,  -- unused, kept for the previous build (see above)
    last_status  INTEGER,
    last_error   TEXT,
    finished_at  REAL,
    lease        TEXT,
    origin       INTEGER NOT NULL DEFAULT 0,
    unconfirmed  INTEGER NOT NULL DEFAULT 0,
    skipped      TEXT,
    logged_at    REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhooks_to_score ON webhooks (origin, available_at)
    WHERE state IN ('pending', 'leased') AND scores IS NULL;
CREATE INDEX IF NOT EXISTS webhooks_to_post ON webhooks (origin, posted & 1, available_at)
    WHERE state IN ('pending', 'leased') AND scores IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhooks_state ON webhooks (state, finished_at);
CREATE INDEX IF NOT EXISTS webhooks_feedback_due ON webhooks (available_at)
    WHERE state IN ('pending', 'leased') AND feedback IS NOT NULL AND posted & 2 = 0;
CREATE INDEX IF NOT EXISTS webhooks_arrived ON webhooks (received_at) WHERE origin = 0;
CREATE INDEX IF NOT EXISTS webhooks_unconfirmed ON webhooks (unconfirmed) WHERE unconfirmed;
CREATE INDEX IF NOT EXISTS webhooks_skipped ON webhooks (state) WHERE skipped IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhooks_waiting ON webhooks (received_at)
    WHERE state IN ('pending', 'leased');
CREATE TABLE IF NOT EXISTS counts (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    pending      INTEGER NOT NULL,
    leased       INTEGER NOT NULL,
    done         INTEGER NOT NULL,
    dead         INTEGER NOT NULL,
    to_score     INTEGER NOT NULL,
    scores_due   INTEGER NOT NULL,
    feedback_due INTEGER NOT NULL,
    unconfirmed  INTEGER NOT NULL,
    skipped      INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS webhooks_count_insert AFTER INSERT ON webhooks BEGIN
    UPDATE counts SET {added};
END;
CREATE TRIGGER IF NOT EXISTS webhooks_count_delete AFTER DELETE ON webhooks BEGIN
    UPDATE counts SET {removed};
END;
CREATE TRIGGER IF NOT EXISTS webhooks_count_update
    AFTER UPDATE OF state, scores, feedback, posted, unconfirmed, skipped ON webhooks BEGIN
    UPDATE counts SET {changed};
END;
CREATE TABLE IF NOT EXISTS post_log (ended_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS post_log_ended ON post_log (ended_at);
CREATE TABLE IF NOT EXISTS post_bound (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    counted INTEGER,
    added   INTEGER NOT NULL DEFAULT 0,
    window  REAL
);
INSERT OR IGNORE INTO post_bound (id) VALUES (1);
CREATE TRIGGER IF NOT EXISTS post_log_added AFTER INSERT ON post_log BEGIN
    UPDATE post_bound SET added = added + 1;
END;
CREATE TRIGGER IF NOT EXISTS post_log_moved AFTER UPDATE OF ended_at ON post_log BEGIN
    UPDATE post_bound SET added = added + 1;
END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""

# What each counter counts, as a 0 or 1 of a row of ``webhooks`` (``{row}``: NEW or OLD); the
# backlog's kinds as Reader.flow counts them (its to_post is the backlog less to_score).
BACKLOG = "{row}.state IN ('pending', 'leased')"
COUNTED = {
    "pending": "{row}.state = 'pending'",
    "leased": "{row}.state = 'leased'",
    "done": "{row}.state = 'done'",
    "dead": "{row}.state = 'dead'",
    "to_score": f"({BACKLOG} AND {{row}}.scores IS NULL)",
    "scores_due": f"({BACKLOG} AND {{row}}.scores IS NOT NULL AND {{row}}.posted & 1 = 0)",
    "feedback_due": f"({BACKLOG} AND {{row}}.feedback IS NOT NULL AND {{row}}.posted & 2 = 0)",
    "unconfirmed": "({row}.unconfirmed != 0)",
    "skipped": "({row}.skipped IS NOT NULL)",
}


def _counting(sign: str) -> str:
    """``counter = counter <sign> NEW's or OLD's share`` for every counter; ``sign``: ``+``
    (an insert), ``-`` (a delete) or ``+-`` (an update: the new row in, the old one out)."""
    terms = []
    for name, flag in COUNTED.items():
        new, old = flag.format(row="NEW"), flag.format(row="OLD")
        delta = {"+": f"+ ({new})", "-": f"- ({old})", "+-": f"+ ({new}) - ({old})"}[sign]
        terms.append(f"{name} = {name} {delta}")
    return ", ".join(terms)


SCHEMA = SCHEMA.format(added=_counting("+"), removed=_counting("-"), changed=_counting("+-"))
# The counters of the rows a store holds when it gets the table (the migration's transaction).
COUNT_ALL = (
    f"INSERT OR IGNORE INTO counts (id, {', '.join(COUNTED)}) SELECT 1, "
    + ", ".join(f"coalesce(sum({flag.format(row='webhooks')}), 0)" for flag in COUNTED.values())
    + " FROM webhooks"
)

MIGRATIONS = {
    1: ("ALTER TABLE webhooks ADD COLUMN lease TEXT",),  # from version 1 to 2
    2: (  # from version 2 to 3; SCHEMA then creates the new indexes
        "ALTER TABLE webhooks ADD COLUMN origin INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE webhooks ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE webhooks ADD COLUMN skipped TEXT",
        "ALTER TABLE webhooks ADD COLUMN logged_at REAL",
        "UPDATE webhooks SET origin = 2 WHERE backfill",
        # The claim indexes are replaced under their names, and the old (backfill,
        # available_at) one is not kept: the previous build claims ``INDEXED BY`` these names,
        # so it must find them, and the new ones serve it (a scan of the due rows, sorted),
        # for the minutes of a rolling restart, while a second index would cost every write
        # until the version that drops ``backfill``.
        "DROP INDEX webhooks_to_score",
        "DROP INDEX webhooks_to_post",
        # ``backfill`` stays for now (expand, then contract: see above).
    ),
    3: (),  # from version 3 to 4: SCHEMA creates the counters, COUNT_ALL fills them
}

# ``posted`` is an integer of bits, one per call, so a merge is ``posted | ?`` in one statement.
_BIT = {call: 1 << i for i, call in enumerate(CALLS)}  # scores: 1, feedback: 2 (as in version 1)


def bits(calls: Posted) -> int:
    return sum(_BIT[c] for c in calls)


def posted(value: int) -> Posted:
    return frozenset(c for c, bit in _BIT.items() if value & bit)


def origin_code(origin: Origin) -> int:
    return ORIGINS.index(origin)


def origin_name(code: int) -> Origin:
    return ORIGINS[code]


def version_problem(version: int, known: tuple[int, ...]) -> str | None:
    if version in known:
        return None
    return f"the database has schema version {version}; this build knows version {SCHEMA_VERSION}"


def create_or_migrate(conn: sqlite3.Connection) -> None:
    """Create the schema in an empty database, or bring an older one to this version."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if (problem := version_problem(version, (0, *MIGRATIONS, SCHEMA_VERSION))) is not None:
        raise StoreError(problem)
    if version:
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
    for statement in _statements(SCHEMA):
        conn.execute(statement)
    if version < SCHEMA_VERSION:  # a version 4 store counted its rows, in the same transaction
        conn.execute(COUNT_ALL)
    if version < 3:  # a version 3 store recorded its own
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)",
            (repr(created(conn, migrated=version > 0)),),
        )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _statements(script: str) -> list[str]:
    """The statements of ``script``: split at ``;`` but for those inside a trigger's body."""
    statements: list[str] = []
    for part in script.split(";"):
        if statements and not sqlite3.complete_statement(statements[-1] + ";"):
            statements[-1] += ";" + part
        elif part.strip():
            statements.append(part)
    return statements


def created(conn: sqlite3.Connection, *, migrated: bool) -> float:
    """The store's ``created`` mark, where the reconciliation sweep's first window starts.

    A fresh store: now. A store migrated from a version that never recorded it: when the
    last live webhook arrived, the last the previous build received, so the requests Helicone
    logged while the deploy that migrates it was under way are swept; not before Helicone's
    scoring window (older ones cannot be scored), and now if it holds none (nothing to go on).
    """
    now = time.time()
    if not migrated:
        return now
    (newest,) = conn.execute("SELECT max(received_at) FROM webhooks WHERE origin = 0").fetchone()
    return now if newest is None else min(max(float(newest), now - SCORING_WINDOW), now)
