"""The PostgreSQL store's schema: versioned, created or migrated at open under an advisory lock.

Two instances starting at once are safe: the lock is taken in the transaction that creates or
migrates, so the second waits and then finds the schema made. A database whose version this
build does not know (a newer build migrated it) is refused with one line, never touched.

Versions are numbered as the SQLite store's, so one number means one feature set: version 2 (the
lease token, which version 1 here already had) changes nothing; version 3 puts ``origin`` (0 live,
1 reconciled, 2 backfill) in the place of ``backfill``, adds ``unconfirmed``, ``skipped`` and
``logged_at``, leads the claim indexes with the origin, adds the indexes the flow counts over, and
records ``created`` in ``scorer_meta``, where the reconciliation sweep's first window starts: a
fresh store's creation; for a database migrated from an older version, which never recorded it,
when the last live webhook arrived (the last the previous build received, so the requests Helicone
logged during the deploy that migrates it are swept), not before Helicone's scoring window, and the
migration's time if it holds none.

Version 4: ``webhook_counts``, counters (webhooks by state, the backlog's calls by kind, the
unconfirmed and the skipped) that statement triggers on ``webhooks`` keep in the transaction of
every insert, update and delete, whichever build's statement made it, so ``queue`` and the flow
read their counts from a few rows rather than counting a backlog of millions; and
``webhooks_waiting`` (``received_at`` of the unfinished), for the oldest one's age. Each
database session adds to a row of its own (its backend pid): a transaction only ever locks its
own session's counters, so instances writing at once never wait on each other for them, and no
new deadlock can arise; the reader sums the rows. Row 0 holds the counts the migration found.

Version 5 (here only): the posting budget's bound, ``budget.counted`` and ``added`` with a
trigger on ``post_slots``, so a place is taken without counting the window (see
.postgres_budget). It came after version 4 had shipped; SQLite's own bound (``post_bound``) is
created with its schema at every open, so a SQLite file stays at version 4.

Expand, then contract: version 3 keeps ``backfill`` (with its default), which this build never
reads or writes, because during a rolling deploy instances of the previous build still claim
from the same database, ordering by it. A later version drops it, once no build that reads it
can still be running.

Times are seconds since the epoch on the database's clock (:func:`scorer_now`), so instances
on machines whose clocks differ still agree on leases, heartbeats and the posting budget.
"""

from __future__ import annotations

from psycopg import AsyncConnection

from webhook.helicone import SCORING_WINDOW
from webhook.store import StoreError

__all__ = ["SCHEMA_VERSION", "check_version", "migrate"]

SCHEMA_VERSION = 5
# pg_advisory_xact_lock key for creating and migrating the schema (any fixed bigint).
SCHEMA_LOCK = 0x5C0_4E5_C4E3A

# What each counter counts, as a 0 or 1 of a row ``r`` of ``webhooks``.
BACKLOG = "r.state IN ('pending', 'leased')"
COUNTED = {
    "pending": "r.state = 'pending'",
    "leased": "r.state = 'leased'",
    "done": "r.state = 'done'",
    "dead": "r.state = 'dead'",
    "to_score": f"{BACKLOG} AND r.scores IS NULL",
    "scores_due": f"{BACKLOG} AND r.scores IS NOT NULL AND NOT r.posted_scores",
    "feedback_due": f"{BACKLOG} AND r.feedback IS NOT NULL AND NOT r.posted_feedback",
    "unconfirmed": "r.unconfirmed",
    "skipped": "r.skipped IS NOT NULL",
}
_COLUMNS = ", ".join(COUNTED)
_SUMS = ", ".join(f"sum(sign * ({flag})::int) AS {name}" for name, flag in COUNTED.items())
_NONZERO = " OR ".join(f"d.{name} <> 0" for name in COUNTED)
_ADD = ", ".join(f"{name} = c.{name} + excluded.{name}" for name in COUNTED)


def _count(rows: str) -> str:
    """Add the counters of ``rows`` (a query of ``sign`` and the row's columns) to this
    session's row, unless they change nothing (a fenced outcome that missed, an extend)."""
    return (
        f"INSERT INTO webhook_counts AS c (slot, {_COLUMNS}) SELECT pg_backend_pid(), {_COLUMNS}"
        f" FROM (SELECT {_SUMS} FROM ({rows}) r) d WHERE {_NONZERO}"
        f" ON CONFLICT (slot) DO UPDATE SET {_ADD}"
    )


# One function for the three triggers, each a statement trigger with its transition tables.
# No statement inside the function's body ends a line with ``;``: the migration splits there.
COUNT_FUNCTION = (
    "CREATE FUNCTION scorer_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF TG_OP = 'INSERT' THEN " + _count("SELECT 1 AS sign, * FROM new_rows") + ";"
    " ELSIF TG_OP = 'DELETE' THEN " + _count("SELECT -1 AS sign, * FROM old_rows") + ";"
    " ELSE "
    + _count("SELECT 1 AS sign, * FROM new_rows UNION ALL SELECT -1, * FROM old_rows")
    + "; END IF; RETURN NULL; END $$"
)
COUNT_ALL = (
    f"INSERT INTO webhook_counts (slot, {_COLUMNS})"
    f" SELECT 0, {', '.join(f'count(*) FILTER (WHERE {flag})' for flag in COUNTED.values())}"
    " FROM webhooks r"
)

# The posting budget's bound (see .postgres_budget): every place added since the last count.
# An insert locks the budget row, which its taker holds already: no new wait.
SLOTS_ADDED = (
    "CREATE FUNCTION scorer_slots_added() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " UPDATE budget SET added = added + (SELECT count(*) FROM new_rows) WHERE id = 1;"
    " RETURN NULL; END $$"
)

# Each version's statements, applied in order from the database's version to SCHEMA_VERSION.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE scorer_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE FUNCTION scorer_now() RETURNS double precision LANGUAGE sql STABLE
    AS 'SELECT extract(epoch FROM now())::double precision';
CREATE TABLE webhooks (
    request_id      text PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    body            bytea,
    state           text NOT NULL DEFAULT 'pending',
    received_at     double precision NOT NULL,
    available_at    double precision NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    scores          jsonb,
    feedback        boolean,
    posted_scores   boolean NOT NULL DEFAULT false,
    posted_feedback boolean NOT NULL DEFAULT false,
    backfill        boolean NOT NULL DEFAULT false,
    last_status     integer,
    last_error      text,
    finished_at     double precision,
    lease           text,
    holder          text
);
CREATE INDEX webhooks_to_score ON webhooks (available_at, seq)
    WHERE state IN ('pending', 'leased') AND scores IS NULL;
CREATE INDEX webhooks_to_post ON webhooks (backfill, available_at, seq)
    WHERE state IN ('pending', 'leased') AND scores IS NOT NULL;
CREATE INDEX webhooks_state ON webhooks (state, finished_at);
CREATE INDEX webhooks_holder ON webhooks (holder) WHERE state = 'leased';
CREATE TABLE instances (
    id           text PRIMARY KEY,
    started_at   double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL
);
CREATE TABLE budget (
    id           integer PRIMARY KEY CHECK (id = 1),
    paused_until double precision NOT NULL DEFAULT 0
);
INSERT INTO budget (id) VALUES (1);
CREATE TABLE post_slots (
    token    text PRIMARY KEY,
    taken_at double precision NOT NULL,
    ended_at double precision,
    holder   text
);
""",
    2: "",
    # ``backfill`` stays (see above). Its index (backfill, available_at, seq) is not kept: the
    # previous build's post claim is served by the new index (a scan of the due rows, sorted)
    # for the minutes of a deploy, while a second index would cost every write until the
    # version that drops ``backfill``. ``created``: see above (a fresh store has no webhooks).
    3: f"""
ALTER TABLE webhooks ADD COLUMN origin smallint NOT NULL DEFAULT 0;
ALTER TABLE webhooks ADD COLUMN unconfirmed boolean NOT NULL DEFAULT false;
ALTER TABLE webhooks ADD COLUMN skipped text;
ALTER TABLE webhooks ADD COLUMN logged_at double precision;
UPDATE webhooks SET origin = 2 WHERE backfill;
DROP INDEX webhooks_to_score;
DROP INDEX webhooks_to_post;
CREATE INDEX webhooks_to_score ON webhooks (origin, available_at, seq)
    WHERE state IN ('pending', 'leased') AND scores IS NULL;
CREATE INDEX webhooks_to_post ON webhooks (origin, posted_scores, available_at, seq)
    WHERE state IN ('pending', 'leased') AND scores IS NOT NULL;
CREATE INDEX webhooks_feedback_due ON webhooks (available_at)
    WHERE state IN ('pending', 'leased') AND feedback IS NOT NULL AND NOT posted_feedback;
CREATE INDEX webhooks_arrived ON webhooks (received_at) WHERE origin = 0;
CREATE INDEX webhooks_unconfirmed ON webhooks (seq) WHERE unconfirmed;
CREATE INDEX webhooks_skipped ON webhooks (seq) WHERE skipped IS NOT NULL;
CREATE INDEX post_slots_ended ON post_slots (ended_at);
CREATE INDEX post_slots_open ON post_slots (taken_at) WHERE ended_at IS NULL;
INSERT INTO scorer_meta (key, value)
    SELECT 'created', least(scorer_now(), greatest(scorer_now() - {SCORING_WINDOW!r},
        coalesce(max(received_at), scorer_now())))::text FROM webhooks WHERE origin = 0
    ON CONFLICT (key) DO NOTHING;
""",
    # The triggers first: creating them locks out every writer until this commits, so the
    # counts taken after them miss no write.
    4: f"""
CREATE TABLE webhook_counts (slot integer PRIMARY KEY,
    {", ".join(f"{name} bigint NOT NULL DEFAULT 0" for name in COUNTED)});
{COUNT_FUNCTION};
CREATE TRIGGER webhooks_count_insert AFTER INSERT ON webhooks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION scorer_count();
CREATE TRIGGER webhooks_count_update AFTER UPDATE ON webhooks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scorer_count();
CREATE TRIGGER webhooks_count_delete AFTER DELETE ON webhooks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION scorer_count();
{COUNT_ALL};
CREATE INDEX webhooks_waiting ON webhooks (received_at) WHERE state IN ('pending', 'leased');
""",
    5: f"""
ALTER TABLE budget ADD COLUMN counted bigint;
ALTER TABLE budget ADD COLUMN added bigint NOT NULL DEFAULT 0;
ALTER TABLE budget ADD COLUMN counted_over double precision;
{SLOTS_ADDED};
CREATE TRIGGER post_slots_added AFTER INSERT ON post_slots
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION scorer_slots_added();
""",
}


async def stored_version(conn: AsyncConnection[tuple[object, ...]]) -> int | None:
    """The schema version in the database, None when it holds no store."""
    cur = await conn.execute("SELECT to_regclass('scorer_meta') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    cur = await conn.execute("SELECT value FROM scorer_meta WHERE key = 'schema_version'")
    row = await cur.fetchone()
    return None if row is None else int(str(row[0]))


def check_version(version: int) -> None:
    if version > SCHEMA_VERSION or version < 1:
        raise StoreError(
            f"the database has schema version {version}; this build knows version {SCHEMA_VERSION}"
        )


async def migrate(conn: AsyncConnection[tuple[object, ...]]) -> None:
    """Create the schema or bring it to :data:`SCHEMA_VERSION`, in one locked transaction."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        version = await stored_version(conn) or 0
        if version:
            check_version(version)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in filter(str.strip, MIGRATIONS[step].split(";\n")):
                await conn.execute(statement.encode())
        await conn.execute(
            "INSERT INTO scorer_meta (key, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
