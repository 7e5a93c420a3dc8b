"""Helicone's REST API, the statistics: ``POST /v1/evals/query``.

Only the offline tools read score statistics, so :class:`HeliconeQuery` is here, and the server
never imports it (nor the models of its answers). Listing logged requests and fetching their
bodies, which the server's reconciliation sweep needs too, is :mod:`webhook.logged`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from webhook.helicone import Answer
from webhook.logged import HeliconeRequests, iso, typed
from webhook.offline.types import Eval

__all__ = ["HeliconeQuery"]

_EVALS = TypeAdapter(list[Eval])


class HeliconeQuery(HeliconeRequests):
    """The API client with every query the offline tools need."""

    async def evals_query(
        self,
        start: datetime,
        end: datetime,
        *,
        filter: Any = "all",
        offset: int | None = None,
        limit: int | None = None,
    ) -> Answer[list[Eval]]:
        """``POST /v1/evals/query``: per score name, count, min, max, average, and hourly series.

        Shape from Helicone's docs (shared/seeds/004) and jawn's ``EvalController`` /
        ``EvalManager.getEvals`` (valhalla/jawn/src/managers/eval/EvalManager.ts).
        """
        body: dict[str, Any] = {
            "filter": filter,
            "timeFilter": {"start": iso(start), "end": iso(end)},
            "timeZoneDifference": 0,
        }
        if offset is not None:
            body["offset"] = offset
        if limit is not None:
            body["limit"] = limit
        return typed(await self.post("/v1/evals/query", body), _EVALS)
