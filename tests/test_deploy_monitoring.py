"""deploy/grafana/dashboard.json and deploy/prometheus/alerts.yml: well formed, passed by promtool
(its rule check, the alerts' unit tests in alerts.test.yml, and every panel's query parsed as
PromQL), and naming only metrics a real server exposes; and the gauges the alerts compare
against follow the store (``helicone_scorer_store_ready``) and the settings.

promtool is Debian's ``prometheus`` package, installed by ``scripts/test-packages``: where it is
missing these tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ServerFactory
from tests.eventually import eventually
from tests.metrics import metric
from tests.packages import installed
from tests.stores import sqlite_writes_held

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
README = ROOT / "README.md"

METRIC_NAME = re.compile(r"\bhelicone_scorer_\w+")
# A sample's name and the family types it may belong to (a counter's TYPE line may carry _total).
SUFFIXES = {
    "_total": {"counter"},
    "_created": {"counter", "histogram", "summary"},
    "_bucket": {"histogram"},
    "_count": {"histogram", "summary"},
    "_sum": {"histogram", "summary"},
}
REQUIRED_ALERTS = {
    "HeliconeScorerDeadLetters",
    "HeliconeScorerDrainSlowerThanMaxAge",
    "HeliconeScorerStoreNotReady",
    "HeliconeScorerRateLimited",
    "HeliconeScorerReconcileFailing",
    "HeliconeScorerReconcileStalled",
}
# What the dashboard must show (at least these metrics, each in some panel's query).
REQUIRED_PANEL_METRICS = {
    "helicone_scorer_webhooks_received_total",
    "helicone_scorer_queue_depth",
    "helicone_scorer_arrival_rate_per_minute",
    "helicone_scorer_post_rate_per_minute",
    "helicone_scorer_drain_seconds",
    "helicone_scorer_max_age_seconds",
    "helicone_scorer_dead_letters_total",
    "helicone_scorer_post_failures_total",
    "helicone_scorer_scorer_duration_seconds_bucket",
    "helicone_scorer_scorer_errors_total",
    "helicone_scorer_store_ready",
    "helicone_scorer_reconcile_listed_total",
    "helicone_scorer_reconcile_missing_total",
    "helicone_scorer_reconcile_reconciled_total",
    "helicone_scorer_reconcile_failed_total",
    "helicone_scorer_reconcile_unconfirmed_total",
    "helicone_scorer_reconcile_last_completed_timestamp_seconds",
    "helicone_scorer_sample_percent",
}
# Grafana's variables, as a query can hold them, replaced by values PromQL parses.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*", "$instance": ".*"}


@pytest.fixture
def promtool() -> str:
    return installed("promtool", "prometheus")


def run_promtool(promtool: str, *args: str | Path) -> None:
    done = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {args}:\n{done.stdout}\n{done.stderr}"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries, those in collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def panel_queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(board) for target in panel["targets"]]


def variable_queries(board: dict[str, Any]) -> list[str]:
    queries = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [group["name"] for group in groups] == ["helicone-scorer"]
    rules: list[dict[str, Any]] = groups[0]["rules"]
    return rules


def families(exposition: str) -> dict[str, str]:
    """Each family's name -> its type, from the ``# TYPE`` lines (which a labelled family with
    no sample yet has too)."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M))


def unknown_metrics(names: set[str], exposition: str) -> set[str]:
    """The ``names`` that are no metric of ``exposition``: neither a family nor one of its
    samples (a counter's ``_total``, a histogram's ``_bucket``, ...)."""
    types = families(exposition)

    def known(name: str) -> bool:
        if name in types:
            return True
        for suffix, kinds in SUFFIXES.items():
            base = name.removesuffix(suffix)
            if base != name and {types.get(base), types.get(f"{base}_total")} & kinds:
                return True
        return False

    return {name for name in names if not known(name)}


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["title"]
    # The datasource is chosen on import (a variable): no uid of one Grafana's datasource.
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"uid": "([^"]*)"', text))
    assert uids <= {"${datasource}", "-- Grafana --"}, uids
    ids = [panel["id"] for panel in board["panels"]]
    ids += [p["id"] for row in board["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert panels(board)
    for panel in panels(board):
        assert panel["title"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_the_dashboard_shows_what_operating_the_scorer_needs() -> None:
    board = dashboard()
    queries = panel_queries(board)
    named = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert named >= REQUIRED_PANEL_METRICS, REQUIRED_PANEL_METRICS - named
    durations = [q for q in queries if "helicone_scorer_scorer_duration_seconds_bucket" in q]
    for quantile in ("0.5", "0.95"):
        assert any(
            q.startswith(f"histogram_quantile({quantile},") and "le)" in q for q in durations
        ), quantile
    failures = next(p for p in panels(board) if "post_failures" in p["targets"][0]["expr"])
    highlighted = [o["matcher"]["options"] for o in failures["fieldConfig"]["overrides"]]
    assert "429" in highlighted  # the legend is the status: 429 drawn apart


def test_every_alert_says_what_to_do() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)
    readme = README.read_text()
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        description = rule["annotations"]["description"]
        assert "README" in description, name
        assert "`helicone-scorer " in description, name  # a command to run
        assert f"`{name}`" in readme, f"{name} is not in the README's list of alerts"


def test_promtool_passes_the_rules_and_their_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", ALERTS)
    run_promtool(promtool, "test", "rules", ALERT_TESTS)
    # Every alert is tested both firing and not.
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    for rule in alert_rules():
        assert cases.get(rule["alert"]) == {True, False}, rule["alert"]


def test_every_panel_query_is_promql(promtool: str, tmp_path: Path) -> None:
    rules = []
    for number, query in enumerate(panel_queries(dashboard())):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"a Grafana variable the test does not know: {query}"
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", path)


def test_every_metric_the_dashboard_and_alerts_name_is_served(
    make_server: ServerFactory,
) -> None:
    board = dashboard()
    names = {
        name
        for query in [*panel_queries(board), *variable_queries(board)]
        + [rule["expr"] for rule in alert_rules()]
        for name in METRIC_NAME.findall(query)
    }
    assert len(names) > 20
    server = make_server(api=False)
    exposition = server.client.get("/metrics").text
    # Families with labels and no sample yet (no post has failed) are known by their TYPE line.
    assert 'helicone_scorer_post_failures_total{status="' not in exposition
    assert unknown_metrics(names, exposition) == set()
    # ...so a misspelt name would be caught.
    typos = {"helicone_scorer_dead_leters_total", "helicone_scorer_queue_depth_bucket"}
    assert unknown_metrics(typos, exposition) == typos
    assert metric(exposition, "helicone_scorer_reconcile_interval_seconds") == 0  # no API key


def test_store_ready_follows_the_store_with_no_readyz_call_and_max_age_is_the_setting(
    make_server: ServerFactory,
) -> None:
    server = make_server(
        # A held lock fails the ping in 0.2 s; the monitor reads (and pings) every 0.5 s.
        SCORER_DATABASE_URL="sqlite:///scorer.db?busy_timeout_ms=200",
        SCORER_FLOW_REPORT_SECONDS="0.5",
        SCORER_MAX_AGE="4321",
        SCORER_RECONCILE_INTERVAL="900",
    )

    def ready(expected: float) -> bool:
        return metric(server.client.get("/metrics").text, "helicone_scorer_store_ready") == expected

    eventually(lambda: ready(1), 20, what="store_ready 1 after the start", show=server.log)
    exposition = server.client.get("/metrics").text
    assert metric(exposition, "helicone_scorer_max_age_seconds") == 4321
    assert metric(exposition, "helicone_scorer_reconcile_interval_seconds") == 900

    with sqlite_writes_held(server.db):
        eventually(lambda: ready(0), 20, what="store_ready 0 while writes fail", show=server.log)
    eventually(lambda: ready(1), 20, what="store_ready 1 once writes succeed", show=server.log)
