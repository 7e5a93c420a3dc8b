"""Read one sample out of the server's Prometheus text (``GET /metrics``)."""

from __future__ import annotations

import re


def metric(text: str, name: str, **labels: str) -> float:
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + label + '}') if label else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    assert found, f"{name} {labels} not in metrics"
    return float(found.group(1))
