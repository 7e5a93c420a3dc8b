"""The flow: how fast webhooks arrive, how fast the API budget lets their calls out, and so how
long the backlog takes to drain; and the sample that makes the posts fit the budget.

Policy:

- The figures come from the store (:meth:`webhook.store.Reader.flow`), counted over the last
  ``WINDOW`` seconds, so every instance on one database sees the same ones: live webhooks that
  arrived, API calls made, and the backlog (webhooks not finished, and the calls they need).
- The backlog drains at what the budget allows beyond what new arrivals need: ``capacity`` (the
  budget's limit, a minute) less ``arriving * calls per webhook``. When that is not positive the
  backlog grows and never drains (``Drain.seconds`` is None). Calls per webhook are the
  backlog's own mix (scores, plus feedback where a rule rated it), else 1, or 2 with a feedback
  rule.
- The server reads them every half minute (:mod:`webhook.monitor`); ``queue`` shows them.
- Every ``SCORER_FLOW_REPORT_SECONDS`` (5 minutes) a log line gives the figures; a warning
  when the drain time passes ``SCORER_MAX_AGE``, since the oldest webhooks then become dead
  letters before their turn.
- ``SCORER_SAMPLE``: a share of webhooks to score and post (100: all, the default), decided per
  request id so every instance and every retry decides the same. ``auto`` sizes it from the
  figures, every ``EVERY`` seconds: the share of arrivals whose calls fit ``HEADROOM`` of the
  budget (the rest is left for retries, the backlog and the reconciliation sweep), never below
  ``FLOOR`` percent. A webhook left out is finished as sampled out, never a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from webhook.sample import in_sample
from webhook.store import Flow

__all__ = ["WINDOW", "Drain", "Sample", "drain", "duration"]

WINDOW = 600.0  # seconds of history the rates are counted over
HEADROOM = 0.9  # share of the budget an automatic sample sizes the posts to
FLOOR = 1.0  # percent: an automatic sample never scores fewer


@dataclass(frozen=True, slots=True)
class Drain:
    arriving: float  # live webhooks a minute
    posting: float  # API calls made a minute
    capacity: float  # API calls a minute the budget allows
    backlog: int  # webhooks not finished
    backlog_calls: int  # the calls they still need
    calls_per_webhook: float
    seconds: float | None  # to drain the backlog at this pace; None: it grows
    sample: float = 100.0  # percent of arrivals scored and posted

    @property
    def growth_per_hour(self) -> float:
        """Calls the backlog gains an hour (negative: it shrinks)."""
        demand = self.arriving * self.calls_per_webhook * self.sample / 100
        return (demand - self.capacity) * 60

    def late(self, max_age: float) -> bool:
        """Whether the backlog takes longer than ``max_age`` to drain (or never does)."""
        return self.seconds is None or self.seconds > max_age

    def advice(self, max_age: float, sample: Sample) -> str:
        """What to say when :meth:`late`: why it matters, and the ways out."""
        grows = self.growth_per_hour
        growing = f", growing by {grows:.0f} calls an hour" if grows > 0 else ""
        ways = "raise the API's rate limit, or narrow the webhook's filters in Helicone"
        if not sample.auto:
            ways = f"set SCORER_SAMPLE=auto to post a sample that fits the budget, or {ways}"
        return (
            f"the backlog drains in {duration(self.seconds)}{growing}, past SCORER_MAX_AGE"
            f" ({duration(max_age)}): the oldest will become dead letters first; {ways}"
        )

    def auto_percent(self) -> float:
        """The sample, in percent, whose calls fit ``HEADROOM`` of the budget."""
        demand = self.arriving * self.calls_per_webhook
        if demand <= 0:
            return 100.0
        return max(FLOOR, min(100.0, 100.0 * HEADROOM * self.capacity / demand))


def drain(
    flow: Flow, limit: int, window: float, feedback: bool, sample: Sample | None = None
) -> Drain:
    """The figures, from the store's counts and the budget (``limit`` calls a ``window``).

    With a ``sample``, only its share of arrivals needs calls; an automatic one is sized from
    these very figures, as the server does (so ``queue`` shows the share the server uses)."""
    minutes = flow.window / 60
    arriving, posting = flow.arrived / minutes, flow.posted / minutes
    capacity = limit * 60 / window
    # The backlog's own mix of calls, else what a new webhook needs.
    per = flow.backlog_calls / flow.backlog if flow.backlog else (2.0 if feedback else 1.0)
    share = 100.0
    if sample is not None and sample.auto:
        share = Drain(arriving, 0, capacity, 0, 0, per, None).auto_percent()
    elif sample is not None:
        share = sample.percent
    net = capacity - arriving * per * share / 100
    seconds: float | None
    if flow.backlog_calls == 0:
        seconds = 0.0
    elif net <= 0:
        seconds = None
    else:
        seconds = flow.backlog_calls / net * 60
    return Drain(arriving, posting, capacity, flow.backlog, flow.backlog_calls, per, seconds, share)


def duration(seconds: float | None) -> str:
    """``45 s``, ``25 min``, ``31 h``, ``4 d``; ``never`` for None."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class Sample:
    """Which webhooks are scored and posted: a share in percent, or ``auto`` (see the module)."""

    def __init__(self, setting: float | Literal["auto"] = 100.0) -> None:
        self.auto = setting == "auto"
        self.percent = 100.0 if setting == "auto" else float(setting)

    @property
    def active(self) -> bool:
        """Whether outcomes mention the sample: it is automatic, or less than all."""
        return self.auto or self.percent < 100

    def fields(self) -> dict[str, Any]:
        """For an outcome's log line: the sample it was kept in, while one is on."""
        return {"sample": self.percent} if self.active else {}

    def keeps(self, request_id: str) -> bool:
        return self.percent >= 100 or in_sample(request_id, self.percent)

    def update(self, figures: Drain) -> None:
        if self.auto:
            self.percent = round(figures.auto_percent(), 1)
