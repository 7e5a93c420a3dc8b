"""Imported only by the scorer processes' forkserver, as it starts (its preload).

A deploy may send SIGTERM to every process of the server's group (systemd's default, ``kill --
-PGID``, ``tini -g``). The forkserver, and the scorer processes it starts, must outlive it while
the server drains: they end when the server ends (their pipes close) or stops them.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
