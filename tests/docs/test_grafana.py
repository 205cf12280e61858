"""docs/grafana/hana-mesh.json, the example dashboard for `/metrics`: every
metric its queries use exists in a live node's `/metrics`, and the names it
uses follow Prometheus's conventions (counters end in `_total`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.client import MeshClient
from tests.integration.harness import Cluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana" / "hana-mesh.json"
# Series Prometheus makes itself for every scrape target, not in /metrics.
SCRAPE_SERIES = frozenset({"up"})

# PromQL words that are not metric names: functions and aggregations are
# told apart by the "(" after them; these are the rest.
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])[0-9][0-9A-Za-z_.]*")  # 0.99, 1e3, durations: 5m, 1h30m
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*\w+\s*\)\s*", expr)
    if m:  # a Grafana variable query: label_values(metric, label)
        return {m.group(1)}
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables ($__rate_interval, ${DS})
    text = _NUMBER.sub(" ", text)
    names = set()
    for word in _WORD.finditer(text):
        rest = text[word.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if word.group().lower() in KEYWORDS:
            continue
        names.add(word.group())
    return names


def test_the_promql_reader_finds_the_metrics() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(hana_fsync_seconds_bucket{instance=~"$instance"}'
        "[$__rate_interval])))"
    )
    assert metric_names(expr) == {"hana_fsync_seconds_bucket"}
    assert metric_names('scalar(max(hana_raft_commit_index)) - hana_raft_applied_index{instance=~"a|b"}') == {
        "hana_raft_commit_index",
        "hana_raft_applied_index",
    }
    assert metric_names('hana_raft_role{role="leader"} == 1 and on (instance) up') == {"hana_raft_role", "up"}
    assert metric_names("label_values(hana_raft_term, instance)") == {"hana_raft_term"}
    assert metric_names("sum without (peer) (rate(x_total[5m] offset 1h))") == {"x_total"}


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expression) for every query of every panel (rows' panels
    included) and every templating variable."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for p in panels:
            for t in p.get("targets", []):
                yield f"panel {p.get('title')!r} target {t.get('refId')}", t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            yield f"variable {var['name']}", q["query"] if isinstance(q, dict) else q


def exposed_names(text: str) -> tuple[set[str], dict[str, str]]:
    """Every name a scrape of `text` yields (sample names, and for families
    without samples yet, those their TYPE implies), and each family's type."""
    names: set[str] = set()
    types: dict[str, str] = {}
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                # prometheus_client names a counter's family with or without
                # _total; its samples are always name_total (and _created).
                name = name.removesuffix("_total")
            types[name] = kind
            # A counter or histogram is stored under its suffixed names only.
            names.update([name + s for s in suffixes[kind]] if kind in suffixes else [name])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group())  # type: ignore[union-attr]
    return names, types


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a real one-node mesh (`hana-node serve`) after a few writes."""
    c = Cluster.create(tmp_path_factory.mktemp("grafana"), 1)
    try:
        c.start_all()

        async def scrape() -> str:
            await c.wait_leader()
            async with MeshClient(c.nodes["n1"].api, timeout=5.0) as client:
                for i in range(3):
                    await client.put(f"parameters/p{i}", i)
                return (await client.raw("GET", "/metrics")).decode()

        return asyncio.run(scrape())
    finally:
        c.stop_everything()


def test_every_metric_the_dashboard_uses_exists_in_a_live_node(live_metrics: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    found = list(queries(dashboard))
    assert len(found) >= 15
    exposed, _ = exposed_names(live_metrics)
    missing = {}
    for where, expr in found:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exposed - SCRAPE_SERIES
        if unknown:
            missing[where] = sorted(unknown)
    assert not missing, f"not in a node's /metrics: {missing}"


def test_the_dashboard_follows_prometheus_naming(live_metrics: str) -> None:
    """Counters are read through their _total series; no name the dashboard
    uses is a counter read without rate/increase."""
    dashboard = json.loads(DASHBOARD.read_text())
    _, types = exposed_names(live_metrics)
    for where, expr in queries(dashboard):
        for name in metric_names(expr) - SCRAPE_SERIES:
            base = name.removesuffix("_total")
            if types.get(base) == "counter":
                assert name.endswith("_total"), f"{where}: counter {base} read as {name}"
                assert re.search(rf"\b(rate|irate|increase)\(\s*{name}\b", expr), f"{where}: {expr}"


def test_the_dashboard_is_importable_grafana_json() -> None:
    """What Grafana's import needs: a Prometheus data source input, and
    panels with a type, a place on the grid and queries with ids."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    ds = "${" + dashboard["__inputs"][0]["name"] + "}"
    ids = set()
    for p in dashboard["panels"]:
        assert {"id", "type", "title", "gridPos"} <= set(p), p.get("title")
        assert p["id"] not in ids
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == ds and p.get("description")
        assert p["targets"] and all(t["refId"] and t["expr"] for t in p["targets"])
