"""The report a person reads at the end of a chaos run.

Three views of one history (the records of `history.jsonl`, see
`simulations/chaoskit/history.py`):

- `summarize(records)`: the numbers. Operations per kind and outcome, faults
  per kind, elections seen, unavailability windows (writes attempted, none
  succeeded for longer than `gap` seconds), write latency percentiles, the
  checker's anomalies and the run's duration; with `--hostile`, the hostile
  neighbours' attempts per kind and what became of them (the status a node
  answered, or how the connection ended) and the peer frames the nodes
  dropped, by reason.
- `summary_table(summary, title)` / `print_report(summary)`: those numbers as
  one rich table, followed by the anomalies in full (details truncated).
- `timeline_png(records, path)`: one picture of the run. Top panel: one lane
  per node with its role over time, faults as shaded bands; bottom panel: the
  latency of every write over time (log scale), unknown outcomes marked at
  the top, windows without a successful write marked at the bottom.

matplotlib is imported inside `timeline_png` only, so importing this module
stays cheap.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import accumulate, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from simulations.chaoskit import offline
from simulations.chaoskit.history import by_type

if TYPE_CHECKING:
    from matplotlib.axes import Axes

WRITE_KINDS = frozenset({"put", "delete", "txn"})
OUTCOMES = ("ok", "fail", "unknown")
ROLES = ("leader", "follower", "candidate", "learner", "down", "unreachable")
ROLE_COLORS: dict[str, str] = {
    "leader": "#2e7d32",
    "follower": "#90caf9",
    "candidate": "#ffb300",
    "learner": "#ce93d8",
    "down": "#212121",
    "unreachable": "#9e9e9e",
}
OTHER_ROLE_COLOR = "#ff00ff"
FAULT_KINDS = (
    "kill",
    "pause",
    "partition",
    "asymmetric",
    "bridge",
    "isolate_leader",
    "latency",
    "loss",
    "membership",
    "torn_tail",
)
_FAULT_PALETTE = (
    "#d62728",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
    "#1f77b4",
    "#2ca02c",
)
DETAIL_LIMIT = 300
# Above this many faults, the bands are not labelled one by one (the legend says which kind is which).
_FAULT_LABEL_LIMIT = 40


# --------------------------------------------------------------------------- summary


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _record_times(record: dict[str, Any]) -> Iterable[float]:
    for field in ("invoke", "complete", "start", "end", "t"):
        v = _num(record.get(field))
        if v is not None:
            yield v


def _last_time(records: Iterable[dict[str, Any]]) -> float:
    """The latest time any record mentions (0.0 when none does)."""
    return max((t for r in records if r.get("type") != "meta" for t in _record_times(r)), default=0.0)


def _run_end(groups: dict[str, list[dict[str, Any]]], records: Sequence[dict[str, Any]]) -> float:
    """Where a timeline ends: the run's duration, or later if records go on after it."""
    meta = groups["meta"][0] if groups["meta"] else {}
    return max(_num(meta.get("duration")) or 0.0, _last_time(records))


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, interpolating linearly between
    closest ranks (numpy's default "linear" method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _leader_of(role: dict[str, Any]) -> Any:
    """The leader a role sample reports: its `leader` field, or the node itself if it says it leads."""
    if role.get("leader") is not None:
        return role["leader"]
    if role.get("role") == "leader":
        return role.get("node")
    return None


def _elections(roles: list[dict[str, Any]]) -> dict[str, Any]:
    """Leader changes: the distinct (term, leader) pairs reported, in time order."""
    leaders: list[dict[str, Any]] = []
    seen: set[tuple[Any, Any]] = set()
    max_term = 0
    for r in sorted(roles, key=lambda r: _num(r.get("t")) or 0.0):
        term = r.get("term")
        if not isinstance(term, int) or isinstance(term, bool):
            continue
        max_term = max(max_term, term)
        leader = _leader_of(r)
        if leader is None or (term, leader) in seen:
            continue
        seen.add((term, leader))
        leaders.append({"t": _num(r.get("t")), "term": term, "leader": leader})
    leaders_per_term = Counter(entry["term"] for entry in leaders)
    return {
        "count": max(len(leaders_per_term) - 1, 0),
        "terms": max_term,
        "leaders": leaders,
        # More than one leader reported for one term: never expected of Raft, worth a look.
        "conflicting_terms": sorted(t for t, n in leaders_per_term.items() if n > 1),
    }


def _unavailability(ops: list[dict[str, Any]], gap: float) -> list[tuple[float, float]]:
    """Windows longer than `gap` seconds between consecutive successful writes (bounded by the
    run's start, 0, and the last operation's time) during which a write was attempted: invoked
    in the window, or already in flight at its start and answered after it began."""
    writes = [o for o in ops if o.get("kind") in WRITE_KINDS and _num(o.get("invoke")) is not None]
    last_op = max((t for o in ops for t in _record_times(o)), default=0.0)
    successes = sorted(c for o in writes if o.get("outcome") == "ok" and (c := _num(o.get("complete"))) is not None)
    bounds = [0.0, *successes, last_op]
    # Writes by invocation time, with the latest known answer among the first i of them (to tell,
    # by bisection, whether one invoked before a window was still waiting when it began).
    attempts = sorted((float(o["invoke"]), _num(o.get("complete")) or -math.inf) for o in writes)
    invokes = [inv for inv, _ in attempts]
    latest_answer = list(accumulate((c for _, c in attempts), max, initial=-math.inf))
    windows: list[tuple[float, float]] = []
    for start, end in pairwise(bounds):
        if end - start <= gap:
            continue
        before = bisect_left(invokes, start)
        if bisect_left(invokes, end) > before or latest_answer[before] > start:
            windows.append((start, end))
    return windows


def _fail_reason(op: dict[str, Any]) -> str:
    """Why a definite refusal was refused: 503 (no controller, not applied)
    is unavailability; 404 and 409 are answers (no such key, a compare that
    did not hold) and the checker treats them as operations that happened."""
    status = op.get("status")
    if status is None:
        return "no connection"
    return FAIL_STATUS_NAMES.get(status, str(status))


FAIL_STATUS_NAMES = {404: "404 not found", 409: "409 compare failed", 503: "503 unavailable"}


def summarize(records: list[dict[str, Any]], gap: float = 1.0) -> dict[str, Any]:
    """The numbers of a run (see the module docstring). Times are seconds since the run
    started; latencies are milliseconds; a latency is None when there is no ok write."""
    groups = by_type(records)
    ops = groups["op"]
    meta = groups["meta"][0] if groups["meta"] else {}

    per_kind: dict[str, dict[str, int]] = {}
    for o in ops:
        if o.get("outcome") == "queued" or o.get("kind") == "resolve":
            continue  # the offline writers' own figures (below)
        counts = per_kind.setdefault(str(o.get("kind")), dict.fromkeys((*OUTCOMES, "total"), 0))
        outcome = o.get("outcome")
        counts[outcome if outcome in OUTCOMES else "unknown"] += 1
        counts["total"] += 1
    totals = {k: sum(c[k] for c in per_kind.values()) for k in (*OUTCOMES, "total")}
    fail_reasons = Counter(_fail_reason(o) for o in ops if o.get("outcome") == "fail")

    fault_kinds = Counter(str(f.get("kind")) for f in groups["fault"])

    windows = _unavailability(ops, gap)
    lengths = [end - start for start, end in windows]

    latencies = sorted(
        (c - i) * 1000.0
        for o in ops
        if o.get("kind") in WRITE_KINDS and o.get("outcome") == "ok"
        if (i := _num(o.get("invoke"))) is not None and (c := _num(o.get("complete"))) is not None
    )
    latency: dict[str, Any] = {"count": len(latencies), "p50": None, "p99": None, "max": None}
    if latencies:
        latency.update(p50=_percentile(latencies, 50), p99=_percentile(latencies, 99), max=latencies[-1])

    anomalies = [{"check": a.get("check"), "detail": a.get("detail")} for a in groups["anomaly"]]
    duration = _num(meta.get("duration"))
    summary: dict[str, Any] = {
        "seed": meta.get("seed"),
        "nodes": list(meta.get("nodes") or []),
        "duration": duration if duration is not None else _last_time(records),
        "ops": {
            "by_kind": dict(sorted(per_kind.items())),
            "total": totals,
            "fail_reasons": dict(fail_reasons.most_common()),
        },
        "faults": {"by_kind": dict(sorted(fault_kinds.items())), "total": sum(fault_kinds.values())},
        "elections": _elections(groups["role"]),
        "unavailability": {
            "gap": gap,
            "windows": windows,
            "count": len(windows),
            "longest": max(lengths, default=0.0),
            "total": sum(lengths),
        },
        "write_latency": latency,
        "anomalies": anomalies,
        "anomaly_count": len(anomalies),
    }
    if groups["hostile"] or groups["scan"]:
        summary["hostile"] = _hostile(groups["hostile"], groups["scan"])
    offline_figures = offline.summarize(records)
    if offline_figures is not None:
        summary["offline"] = offline_figures
    # CA rolls of rotate_ca faults (--tls): whether each ended, and how long it took.
    rolls = [{"fault": f.get("id"), **f["roll"]} for f in groups["fault"] if isinstance(f.get("roll"), dict)]
    if rolls:
        summary["ca_rolls"] = rolls
    return summary


def hostile_outcome(attempt: dict[str, Any]) -> str:
    """What became of one hostile attempt, as counted: the HTTP status the
    node answered (with its error code), else how the connection ended."""
    status = attempt.get("status")
    if attempt.get("outcome") == "answered" and status is not None:
        return f"{status} {attempt['code']}" if attempt.get("code") else str(status)
    return str(attempt.get("outcome"))


def _hostile(attempts: list[dict[str, Any]], scans: list[dict[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {}
    for a in attempts:
        entry = kinds.setdefault(str(a.get("kind")), {"attempts": 0, "outcomes": Counter()})
        entry["attempts"] += 1
        entry["outcomes"][hostile_outcome(a)] += 1
    dropped: Counter[str] = Counter()
    for scan in scans:
        dropped.update(scan.get("dropped_frames") or {})
    return {
        "by_kind": {
            kind: {"attempts": entry["attempts"], "outcomes": dict(entry["outcomes"].most_common())}
            for kind, entry in sorted(kinds.items())
        },
        "attempts": len(attempts),
        "connections_refused": sum(1 for a in attempts if a.get("outcome") in ("closed", "dropped", "refused")),
        "peer_frames_dropped": dict(dropped.most_common()),
    }


# --------------------------------------------------------------------------- table


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f} ms"


def _outcome_text(counts: dict[str, int]) -> Text:
    text = Text()
    text.append(f"{counts['ok']} ok", style="green")
    text.append("   ")
    text.append(f"{counts['fail']} fail", style="yellow" if counts["fail"] else "dim")
    text.append("   ")
    text.append(f"{counts['unknown']} unknown", style="magenta" if counts["unknown"] else "dim")
    text.append(f"   ({counts['total']})", style="dim")
    return text


def summary_table(summary: dict[str, Any], title: str) -> Table:
    """The summary as one table: operations, faults, elections, unavailability, write latency, anomalies."""
    table = Table(title=title, show_header=True, header_style="bold", title_style="bold")
    table.add_column("section", style="cyan", no_wrap=True)
    table.add_column("item", no_wrap=True)
    table.add_column("value")

    run = [f"{summary['duration']:.1f} s"]
    if summary.get("seed") is not None:
        run.append(f"seed {summary['seed']}")
    if summary.get("nodes"):
        run.append(f"{len(summary['nodes'])} nodes: {', '.join(map(str, summary['nodes']))}")
    table.add_row("run", "", Text("   ".join(run)), end_section=True)

    ops = summary["ops"]
    kinds = list(ops["by_kind"].items())
    for i, (kind, counts) in enumerate(kinds):
        table.add_row("operations" if i == 0 else "", Text(kind), _outcome_text(counts))
    table.add_row("operations" if not kinds else "", Text("all", style="bold"), _outcome_text(ops["total"]))
    reasons = ops.get("fail_reasons") or {}
    if reasons:
        table.add_row("", "fails by reason", "\n".join(f"{why}: {n}" for why, n in reasons.items()))
    table.rows[-1].end_section = True

    faults = summary["faults"]
    for i, (kind, n) in enumerate(faults["by_kind"].items()):
        table.add_row("faults" if i == 0 else "", Text(kind), str(n))
    table.add_row("faults" if not faults["by_kind"] else "", Text("all", style="bold"), str(faults["total"]))
    for roll in summary.get("ca_rolls", []):
        done = roll.get("done") and isinstance(roll.get("seconds"), int | float)
        table.add_row("", "CA roll", f"done in {roll['seconds']:.1f} s" if done else Text("NOT done", style="bold red"))
    table.rows[-1].end_section = True

    elections = summary["elections"]
    table.add_row("elections", "leader changes", str(elections["count"]))
    table.add_row("", "max term", str(elections["terms"]))
    if elections.get("conflicting_terms"):
        table.add_row(
            "", "terms with 2+ leaders", Text(", ".join(map(str, elections["conflicting_terms"])), style="bold red")
        )
    table.rows[-1].end_section = True

    unavail = summary["unavailability"]
    table.add_row("unavailability", f"windows > {unavail['gap']:g} s", str(unavail["count"]))
    table.add_row("", "longest", f"{unavail['longest']:.2f} s")
    table.add_row("", "total", f"{unavail['total']:.2f} s", end_section=True)

    latency = summary["write_latency"]
    table.add_row("write latency", "p50", _ms(latency["p50"]))
    table.add_row("", "p99", _ms(latency["p99"]))
    table.add_row("", "max", _ms(latency["max"]))
    table.add_row("", "ok writes", str(latency["count"]), end_section=True)

    hostile = summary.get("hostile")
    if hostile:
        for i, (kind, entry) in enumerate(hostile["by_kind"].items()):
            outcomes = ", ".join(f"{o} x{c}" for o, c in entry["outcomes"].items())
            table.add_row("hostile" if i == 0 else "", Text(kind), f"{entry['attempts']}: {outcomes}")
        table.add_row(
            "hostile" if not hostile["by_kind"] else "",
            Text("all", style="bold"),
            f"{hostile['attempts']} attempts, {hostile['connections_refused']} connections closed unanswered",
        )
        if hostile["peer_frames_dropped"]:
            dropped = ", ".join(f"{r} x{n}" for r, n in hostile["peer_frames_dropped"].items())
            table.add_row("", "peer frames dropped", dropped)
        table.rows[-1].end_section = True

    off = summary.get("offline")
    if off:
        answered = ", ".join(f"{o} x{c}" for o, c in sorted(off["answered"].items()))
        table.add_row("offline", "writes", f"{off['writes']}: {answered}")
        table.add_row("", "queued: fates", ", ".join(f"{f} x{c}" for f, c in sorted(off["fates"].items())) or "-")
        resolves = ", ".join(f"{o} x{c}" for o, c in sorted(off["resolves"].items())) or "none"
        table.add_row("", "conflicts", f"{off['conflicts']} ({off['conflicts_open']} open); resolves {resolves}")
        table.rows[-1].end_section = True

    n = summary["anomaly_count"]
    table.add_row("anomalies", "count", Text(str(n), style="bold red" if n else "bold green"))
    return table


def _truncate(text: str, limit: int = DETAIL_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_report(summary: dict[str, Any], console: Console | None = None, title: str = "chaos run") -> None:
    """Prints the summary table and, below it, each anomaly's check and (truncated) detail."""
    console = console or Console()
    console.print(summary_table(summary, title))
    if not summary["anomalies"]:
        return
    console.print(Text(f"{summary['anomaly_count']} anomalies:", style="bold red"))
    for a in summary["anomalies"]:
        line = Text("  ")
        line.append(str(a.get("check")), style="bold red")
        line.append(": ")
        line.append(_truncate(str(a.get("detail"))))
        console.print(line)


# --------------------------------------------------------------------------- timeline


def _node_order(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Lanes: the meta's nodes in order, then any other node seen, in order of first appearance."""
    order: dict[str, None] = {}
    for meta in groups["meta"][:1]:
        order.update((str(n), None) for n in meta.get("nodes") or [])
    for r in groups["role"]:
        if r.get("node") is not None:
            order.setdefault(str(r["node"]), None)
    for f in groups["fault"]:
        for n in f.get("nodes") or []:
            order.setdefault(str(n), None)
    for o in groups["op"]:
        if o.get("node") is not None:
            order.setdefault(str(o["node"]), None)
    return list(order)


def _plain(text: str) -> str:
    """Text for matplotlib, shown as written (a "$" would otherwise start mathtext)."""
    return text.replace("$", r"\$")


def _fault_colors(kinds: Iterable[str]) -> dict[str, str]:
    colors = {k: _FAULT_PALETTE[i % len(_FAULT_PALETTE)] for i, k in enumerate(FAULT_KINDS)}
    extra = [k for k in sorted(set(kinds)) if k not in colors]
    for i, k in enumerate(extra):
        colors[k] = _FAULT_PALETTE[(len(FAULT_KINDS) + i) % len(_FAULT_PALETTE)]
    return colors


def _fault_span(fault: dict[str, Any], end: float) -> tuple[float, float] | None:
    start = _num(fault.get("start"))
    if start is None:
        return None
    stop = _num(fault.get("end"))
    stop = end if stop is None else stop
    return (start, max(stop - start, 0.0))


def _fault_bands(ax: Axes, spans: dict[str, list[tuple[float, float]]], colors: dict[str, str], alpha: float) -> None:
    """Vertical bands over the whole height of `ax`, one vectorised call per fault kind."""
    for kind, xranges in spans.items():
        ax.broken_barh(
            xranges,
            (0.0, 1.0),
            transform=ax.get_xaxis_transform(),
            facecolors=colors[kind],
            alpha=alpha,
            edgecolor="none",
            zorder=0,
        )


# What makes matplotlib importable (an extra of the package, in pyproject.toml).
MATPLOTLIB_INSTALL = "pip install -e '.[chaos]'"


def timeline_missing() -> str | None:
    """Why `timeline_png` could not draw here (matplotlib missing or
    broken), or None if it can: asked before a run starts, so that a run
    never ends in an import error after its whole workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    except ImportError as exc:
        return (
            f"matplotlib cannot be imported ({exc}); it draws timeline.png. "
            f"Install it in this environment: {MATPLOTLIB_INSTALL} (in the repository), "
            "or pip install matplotlib"
        )
    return None


def timeline_png(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Draws the run (roles per node, faults, write latency, anomalies) into a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    groups = by_type(records)
    end = _run_end(groups, records)
    x_max = end if end > 0 else 1.0
    nodes = _node_order(groups)
    lane = {node: len(nodes) - 1 - i for i, node in enumerate(nodes)}  # first node on top
    summary = summarize(records)

    fig, (ax_roles, ax_lat) = plt.subplots(
        2, 1, figsize=(14, 7), dpi=110, sharex=True, gridspec_kw={"height_ratios": [max(len(nodes), 2), 3]}
    )
    try:
        # Roles: per node, consecutive samples with the same role merged into one segment that
        # lasts until the node's next sample with another role (the last one: to the run's end).
        samples: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for r in groups["role"]:
            t = _num(r.get("t"))
            if t is not None and r.get("node") is not None:
                samples[str(r["node"])].append((t, str(r.get("role"))))
        segments: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        leader_terms: list[tuple[float, float, str, Any]] = []  # (start, width, node, term) of leader segments
        term_at = {
            (str(r["node"]), _num(r.get("t"))): r.get("term") for r in groups["role"] if r.get("node") is not None
        }
        for node, node_samples in samples.items():
            node_samples.sort(key=lambda s: s[0])
            i = 0
            while i < len(node_samples):
                start, role = node_samples[i]
                j = i + 1
                while j < len(node_samples) and node_samples[j][1] == role:
                    j += 1
                stop = node_samples[j][0] if j < len(node_samples) else max(end, start)
                segments[(node, role)].append((start, stop - start))
                if role == "leader":
                    leader_terms.append((start, stop - start, node, term_at.get((node, start))))
                i = j
        present_roles: set[str] = set()
        for (node, role), xranges in segments.items():
            present_roles.add(role)
            ax_roles.broken_barh(
                xranges, (lane[node] - 0.35, 0.7), facecolors=ROLE_COLORS.get(role, OTHER_ROLE_COLOR), zorder=2
            )
        if len(leader_terms) <= 60:
            for start, width, node, term in leader_terms:
                if term is not None and width >= x_max / 80:
                    label = f"term {term}" if width >= x_max / 20 else f"t{term}"
                    ax_roles.text(
                        start + width / 2, lane[node], label, ha="center", va="center", fontsize=7, color="white"
                    )
        if not samples:
            ax_roles.text(0.5, 0.5, "no role samples", transform=ax_roles.transAxes, ha="center", color="#777777")

        # Faults: bands over both panels, a thin strip on the lanes of the nodes a fault names.
        colors = _fault_colors(str(f.get("kind")) for f in groups["fault"])
        spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        strips: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for f in groups["fault"]:
            span = _fault_span(f, end)
            if span is None:
                continue
            kind = str(f.get("kind"))
            spans[kind].append(span)
            for n in f.get("nodes") or []:
                if str(n) in lane:
                    strips[(str(n), kind)].append(span)
        _fault_bands(ax_roles, spans, colors, alpha=0.22)
        _fault_bands(ax_lat, spans, colors, alpha=0.10)
        for (node, kind), xranges in strips.items():
            ax_roles.broken_barh(xranges, (lane[node] - 0.48, 0.12), facecolors=colors[kind], zorder=3)
        if len(groups["fault"]) <= _FAULT_LABEL_LIMIT:
            for f in groups["fault"]:
                span = _fault_span(f, end)
                if span is not None:
                    ax_roles.text(
                        span[0],
                        1.0,
                        _plain(f" {f.get('kind')}"),
                        transform=ax_roles.get_xaxis_transform(),
                        rotation=90,
                        ha="left",
                        va="top",
                        fontsize=7,
                        color=colors[str(f.get("kind"))],
                        zorder=4,
                    )

        ax_roles.set_yticks(list(lane.values()), [_plain(n) for n in lane])
        ax_roles.set_ylim(-0.6, max(len(nodes), 1) - 0.15)  # room above the top lane for the fault labels
        ax_roles.set_ylabel("node")
        ax_roles.grid(axis="x", alpha=0.3)
        role_handles = [
            Patch(facecolor=ROLE_COLORS.get(r, OTHER_ROLE_COLOR), label=r)
            for r in (*ROLES, *sorted(present_roles - set(ROLES)))
            if r in present_roles or r in ("leader", "follower")
        ]
        # Two columns each, so that both legends fit beside the lanes even
        # when a long run shows every role and every fault kind.
        role_legend = ax_roles.legend(
            handles=role_handles, title="role", loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, ncol=2
        )
        if spans:
            ax_roles.add_artist(role_legend)
            ax_roles.legend(
                handles=[Patch(facecolor=colors[k], alpha=0.5, label=_plain(k)) for k in sorted(spans)],
                title="fault",
                loc="lower left",
                bbox_to_anchor=(1.005, 0.0),
                fontsize=8,
                ncol=2,
            )

        # Write latency, one vectorised call per outcome; unknown outcomes at the top of the panel.
        points: dict[str, tuple[list[float], list[float]]] = {"ok": ([], []), "fail": ([], [])}
        unknown_x: list[float] = []
        for o in groups["op"]:
            if o.get("kind") not in WRITE_KINDS or (inv := _num(o.get("invoke"))) is None:
                continue
            done = _num(o.get("complete"))
            if o.get("outcome") in points and done is not None:
                xs, ys = points[o["outcome"]]
                xs.append(inv)
                ys.append(max((done - inv) * 1000.0, 0.01))
            else:
                unknown_x.append(inv)
        lat_handles: list[Any] = []
        for outcome, color, size in (("ok", "#1565c0", 10), ("fail", "#ef6c00", 18)):
            xs, ys = points[outcome]
            if xs:
                ax_lat.scatter(xs, ys, s=size, c=color, alpha=0.7, linewidths=0, label=f"{outcome} ({len(xs)})")
        if unknown_x:
            ax_lat.plot(
                unknown_x,
                [0.96] * len(unknown_x),
                linestyle="none",
                marker="x",
                color="red",
                markersize=5,
                transform=ax_lat.get_xaxis_transform(),
                label=f"unknown ({len(unknown_x)})",
            )
        windows = summary["unavailability"]["windows"]
        if windows:
            ax_lat.broken_barh(
                [(s, e - s) for s, e in windows],
                (0.0, 0.04),
                transform=ax_lat.get_xaxis_transform(),
                facecolors="#b71c1c",
                zorder=3,
            )
            lat_handles.append(
                Patch(facecolor="#b71c1c", label=f"no write ok > {summary['unavailability']['gap']:g} s")
            )
        ax_lat.set_yscale("log")
        if any(points[k][0] for k in points):
            # Headroom above the slowest write for the unknown-outcome marks, below the fastest for the windows.
            low, high = ax_lat.get_ylim()
            ax_lat.set_ylim(low / 2, high * 4)
        else:
            ax_lat.set_ylim(0.1, 10_000)
            ax_lat.text(0.5, 0.5, "no completed writes", transform=ax_lat.transAxes, ha="center", color="#777777")
        ax_lat.set_ylabel("write latency (ms)")
        ax_lat.set_xlabel("seconds since start (writes at their invocation)")
        ax_lat.grid(alpha=0.3, which="major")
        handles, _ = ax_lat.get_legend_handles_labels()
        if handles or lat_handles:
            ax_lat.legend(handles=[*handles, *lat_handles], loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
        ax_lat.set_xlim(0.0, x_max)

        # Title area: the title, then the anomalies in red (or "no anomalies" in green); the run's
        # numbers in one line above the latency panel.
        if title:
            fig.suptitle(_plain(title), fontsize=12, fontweight="bold")
        ops_total = summary["ops"]["total"]
        unavail, latency = summary["unavailability"], summary["write_latency"]
        stats = (
            f"ops: {ops_total['total']} ({ops_total['ok']} ok, {ops_total['fail']} fail,"
            f" {ops_total['unknown']} unknown) · faults: {summary['faults']['total']}"
            f" · elections: {summary['elections']['count']}"
            f" · windows without a successful write: {unavail['count']} (longest {unavail['longest']:.1f} s)"
        )
        if latency["count"]:
            stats += f" · ok writes: p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms"
        ax_lat.set_title(stats, loc="left", fontsize=8, color="#555555")
        anomalies = summary["anomalies"]
        if anomalies:
            lines = [f"{len(anomalies)} {'anomaly' if len(anomalies) == 1 else 'anomalies'}"] + [
                _plain(_truncate(f"{a.get('check')}: {a.get('detail')}", 150)) for a in anomalies[:3]
            ]
            if len(anomalies) > 3:
                lines.append(f"… and {len(anomalies) - 3} more")
            ax_roles.set_title("\n".join(lines), color="red", loc="left", fontsize=9, fontweight="bold")
        else:
            ax_roles.set_title("no anomalies", color="green", loc="left", fontsize=9)

        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


__all__ = ["print_report", "summarize", "summary_table", "timeline_png"]
