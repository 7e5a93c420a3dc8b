"""Which servers are alive on one SQLite file: a ``flock`` on a lock file beside it.

Every serving process holds a *shared* lock on ``<database>.lock`` for as long as its store is
open. A process that starts first tries an *exclusive* lock, without waiting: if it gets it, no
other server is alive, so every lease in the file belongs to a process that is gone (killed,
out of memory, powered off) and can be taken back at once instead of when it runs out. Then it
downgrades to shared, so other servers can join. The kernel drops a dead process's lock, however
it died, so the lock never goes stale.

If the exclusive lock is refused, other servers are alive and their leases are left alone: a
lease of a server that died while others ran is still taken back when it runs out.

Commands that only read or edit the queue (``queue``, ``backfill``...) take no lock.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["ServerLock"]


class ServerLock:
    def __init__(self, database: str) -> None:
        self.path = f"{database}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Hold the lock, exclusively if possible: True when no other server is alive.

        Call :meth:`share` once the orphaned leases are taken back.
        """
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # waits only while another start recovers
            return False
        return True

    def share(self) -> None:
        """Downgrade to shared. Not atomic (``flock`` drops, then takes): a server starting in
        that instant may take the exclusive lock and recover, which is harmless, because this one
        holds no lease yet."""
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None
