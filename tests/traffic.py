"""Steady traffic for deploy and multi-instance tests: client threads sending unique signed
webhooks at a fixed rate, every outcome kept (the status, or the error the client saw)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx2

from tests.eventually import eventually
from tests.server import SECRET, payload
from webhook.verify import sign

RATE = 30.0  # webhooks a second, per client thread
# One client keeps its connection alive between webhooks (closing it well before the server's
# keep-alive timeout, as a proxy's pool does); the other opens a connection for each.
KEEP_ALIVE = (True, False)
BETWEEN = 60  # webhooks sent between two steps of the deploy


@dataclass
class Sent:
    at: float
    outcome: int | str  # the status, or the error the client saw


@dataclass
class Traffic:
    """Client threads sending signed webhooks at a steady rate; every outcome is kept."""

    url: str
    sent: dict[str, Sent] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for keep_alive in KEEP_ALIVE:
            thread = threading.Thread(target=self._send, args=(keep_alive,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def count(self) -> int:
        return len(self.sent)

    def wait_for_more(self, n: int = BETWEEN) -> None:
        target = self.count() + n
        eventually(lambda: self.count() >= target, 30, what=f"{target} webhooks sent")

    def _send(self, keep_alive: bool) -> None:
        limits = httpx2.Limits(max_keepalive_connections=int(keep_alive), keepalive_expiry=1.0)
        with httpx2.Client(base_url=self.url, timeout=60, limits=limits, trust_env=False) as c:
            next_at = time.monotonic()
            while not self._stop.is_set():
                rid = str(uuid.uuid4())
                body = payload(rid)
                headers = {"Content-Type": "application/json"}
                headers["Helicone-Signature"] = sign(SECRET, body)
                at = time.monotonic()
                outcome: int | str
                try:
                    outcome = c.post("/webhook", content=body, headers=headers).status_code
                except httpx2.HTTPError as exc:
                    outcome = repr(exc)
                self.sent[rid] = Sent(at, outcome)
                next_at += 1 / RATE
                self._stop.wait(max(0.0, next_at - time.monotonic()))
