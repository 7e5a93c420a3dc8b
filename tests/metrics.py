"""Read one sample out of the server's Prometheus text (``GET /metrics``)."""

from __future__ import annotations

import re


def metric(text: str, name: str, *, default: float | None = None, **labels: str) -> float:
    """The sample's value; ``default`` when it is not there (a labelled counter appears with
    its first increment), else an assertion fails."""
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + label + '}') if label else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    if found is None and default is not None:
        return default
    assert found, f"{name} {labels} not in metrics"
    return float(found.group(1))
