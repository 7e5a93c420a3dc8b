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

SCHEMA_VERSION = 3
# pg_advisory_xact_lock key for creating and migrating the schema (any fixed bigint).
SCHEMA_LOCK = 0x5C0_4E5_C4E3A

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
