"""The checker of a chaos run's history (see history.py for the format).

Each check returns anomalies, `{"check": <name>, "detail": <text>}`; an
empty list from all of them means the run kept every promise checked:

- linearizability: every key is a register with versions (puts,
  conditional puts, deletes, the per-key parts of transactions,
  linearizable reads and prefix reads, and the current value a 409
  reports); operations of unknown outcome may or may not have happened
  (simulations/linearizability.py).
- acknowledged_writes: every write answered 200 is in every node's log at
  the revision it was answered with, with its value; transactions at one
  revision for all their keys.
- phantom_writes: every value in any node's log was written by an
  operation that was invoked and not definitely refused (409, 503,
  refused connection), and by it only once; a transaction is in the log
  whole, at one revision, or not at all; a key has no more delete records
  than acknowledged and unknown deletes of it.
- state_matches_log: each node's final key/value state is what its own
  log says.
- reads_match_log: every read (linearizable, local, prefix) returned exactly
  the state the log gives at the revision the node answered with: stale is
  allowed for local reads, invented or torn (half a transaction) is not.
- Settling unknown outcomes first: every written value is unique, so an
  unknown put (or transaction part) whose value is in the log happened
  (at its revision) and one whose value is not, never did; unknown deletes
  are settled by counting a key's delete records. This keeps the search
  from trying every subset of unknown writes.
- watches: every watch session delivered exactly the log's records under
  its prefix from its `since`, in order, without gaps or duplicates (its
  last revision may be cut short: a transaction's records share one);
  none was refused as compacted (the nodes keep all history here); the
  final full watch on each node reaches the log's last revision.
- convergence: after the faults stopped, all nodes reached the same
  applied index, the same snapshot digest, the same state and log.
- offline fates (offline.py, runs with offline writers): every queued
  write reaches exactly one final fate; a superseded or rejected one is
  never visible; a conflict one only after a resolve that takes it; an
  applied one is in the log once and, as a write of unknown outcome, part
  of the linearizability check above; all nodes agree on the conflicts.
- unexpected_status: statuses the API does not give for these requests
  (400, 500, …) are bugs of the client or the node.
- hostile (runs with `--hostile`, see hostile.py): nothing a hostile
  neighbour sent is anywhere in any node's final state, change history,
  audit trail (failed-login events, which record the attempt, aside) or
  member list, nor in the workload's final states and watches
  (`hostile_state`); every attempt the contract refuses was refused with
  the contract's status and JSON error shape (`hostile_accepted` for a
  2xx or an upgraded WebSocket, `hostile_refusal` for another answer);
  no node answered a peer hello without the secret or showed an address
  an impersonator announced (`hostile_peer`); no slow-header connection
  was held for the whole limit (`hostile_slow_header`).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from typing import Any

from simulations.chaoskit import offline
from simulations.chaoskit.hostile import HOSTILE_PREFIX, MARKER, PEER_BREACHES, REFUSED_WITH
from simulations.linearizability import Op, SearchBudgetExceeded, check

Anomaly = dict[str, str]
EXPECTED_STATUSES = {
    "put": {200, 409, 503, 504},
    "delete": {200, 404, 409, 503, 504},
    "txn": {200, 409, 503, 504},
    "read": {200, 404, 503, 504},
    "read_local": {200, 404, 503},
    "list": {200, 503, 504},
    "resolve": {200, 404, 409, 503, 504},
}


def run_checks(records: list[dict[str, Any]], budget: int = 2_000_000) -> list[Anomaly]:
    all_ops = [r for r in records if r["type"] == "op"]
    finals = [r for r in records if r["type"] == "final"]
    watches = [r for r in records if r["type"] == "watch"]
    anomalies = check_statuses(all_ops) + check_hostile(records) + offline.check_offline(records)
    anomalies += check_ca_rolls(records)
    # Offline writes by their fates; the manual-policy keys and resolves
    # are offline.check_offline's alone.
    ops = offline.project_fates(all_ops, [r for r in records if r["type"] == "offline"])
    if not finals:
        anomalies += check_linearizable(ops, budget)
        return [*anomalies, {"check": "convergence", "detail": "no node's final state was collected"}]
    anomalies += check_convergence(finals)
    anomalies += check_state_matches_log(finals)
    for final in finals:
        anomalies += check_acknowledged_writes(ops, final)
    anomalies += check_phantom_writes(ops, finals[0])
    settled, unsettled = settle_unknown(ops, finals[0])
    anomalies += unsettled
    anomalies += check_linearizable(settled, budget)
    anomalies += check_reads_match_log(ops, finals[0])
    anomalies += check_watches(watches, finals[0])
    return anomalies


# -- settling unknown outcomes ----------------------------------------------------------


def _versions(log: list[dict[str, Any]]) -> dict[tuple[int, str], int]:
    """The version each put record gave its key."""
    current: dict[str, int] = defaultdict(int)
    out: dict[tuple[int, str], int] = {}
    for rec in sorted(log, key=lambda x: x["revision"]):
        if rec["op"] == "put":
            current[rec["key"]] += 1
            out[(rec["revision"], rec["key"])] = current[rec["key"]]
        else:
            current[rec["key"]] = 0
    return out


def _written_by(rec: dict[str, Any]) -> tuple[int, int] | None:
    """(op id, transaction part) of a put record's value, if a client's."""
    value = rec.get("value")
    if rec["op"] != "put" or not isinstance(value, dict) or not isinstance(value.get("op"), int):
        return None
    return value["op"], value.get("i", 0)


def settle_unknown(ops: list[dict[str, Any]], final: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Anomaly]]:
    """The operations with unknown outcomes decided from the final log where
    it can tell (see the module docstring), and anomalies for deletes the
    log holds more of than clients could have made."""
    log = final["records"]
    versions = _versions(log)
    where = {w: rec for rec in log if (w := _written_by(rec)) is not None}
    end = max((r.get("complete") or r["invoke"] for r in ops), default=0.0) + 1.0
    acked_deletes = {(r["result"]["revision"], r["key"]) for r in ops if r["kind"] == "delete" and r["outcome"] == "ok"}
    delete_records: Counter[str] = Counter(
        rec["key"] for rec in log if rec["op"] == "delete" and (rec["revision"], rec["key"]) not in acked_deletes
    )
    unknown_deletes: Counter[str] = Counter(
        r["key"] for r in ops if r["kind"] == "delete" and r["outcome"] == "unknown"
    )
    anomalies = [
        {
            "check": "phantom_writes",
            "detail": f"{key}: {n} delete records the log holds are not explained by acknowledged deletes "
            f"and only {unknown_deletes[key]} deletes of unknown outcome",
        }
        for key, n in sorted(delete_records.items())
        if n > unknown_deletes[key]
    ]
    out: list[dict[str, Any]] = []
    for r in ops:
        if r["outcome"] != "unknown" or r["kind"] not in ("put", "txn", "delete"):
            out.append(r)
            continue
        if r["kind"] == "delete":
            if delete_records[r["key"]] > 0:
                out.append(r)  # may have happened: stays unknown
            continue  # no unexplained delete of this key: it never happened
        parts = len(r["keys"]) if r["kind"] == "txn" else 1
        recs = [where.get((r["id"], i)) for i in range(parts)]
        if all(x is None for x in recs):
            continue  # never happened
        if any(x is None for x in recs):
            continue  # half a transaction: check_phantom_writes reports it
        revision = recs[0]["revision"]  # type: ignore[index]
        if r["kind"] == "txn":
            results = [{"key": x["key"], "version": versions[(revision, x["key"])]} for x in recs]  # type: ignore[index]
            result: dict[str, Any] = {"revision": revision, "results": results}
        else:
            result = {"key": r["key"], "version": versions[(revision, r["key"])], "revision": revision}
        out.append({**r, "outcome": "ok", "status": 200, "complete": end, "result": result, "settled": True})
    return out, anomalies


# -- linearizability ---------------------------------------------------------------


def linearizability_ops(ops: list[dict[str, Any]]) -> list[Op]:
    """The per-key register operations a client history implies."""
    out: list[Op] = []
    for r in ops:
        out += _project(r)
    return out


def _project(r: dict[str, Any]) -> list[Op]:
    kind, outcome, status, doc = r["kind"], r["outcome"], r.get("status"), r.get("result")
    base = r["id"] * 16
    inv, comp = r["invoke"], r.get("complete")
    out: list[Op] = []
    if outcome == "fail" and status == 409:
        # A conflict: the check failed, and the node told the current value.
        key, expected = r.get("key"), r.get("expected_version")
        err = (doc or {}).get("error", {}) if isinstance(doc, dict) else {}
        if kind == "txn":
            i = err.get("op_index")
            if not isinstance(i, int) or not 0 <= i < len(r["keys"]):
                return []
            key, expected = r["keys"][i], r["value"][i].get("expected_version")
        write_kind = "delete" if kind == "delete" else "put"
        out.append(Op(base, key, write_kind, inv, comp, None, expected, "conflict"))
        if "current" in err:
            cur = err["current"]
            if isinstance(cur, dict):
                out.append(Op(base + 15, key, "get", inv, comp, cur.get("value"), None, "ok", cur.get("version")))
            else:
                out.append(Op(base + 15, key, "get", inv, comp, None, None, "not_found"))
        return out
    if outcome == "fail" and not (status == 404 and kind in ("read", "delete")):
        return []  # definitely did nothing and observed nothing
    unknown = outcome == "unknown"
    if isinstance(doc, dict) and doc.get("superseded"):
        # 200 but skipped (a concurrent newer write won, last-writer-wins):
        # nothing changed; the answer tells the current value.
        cur = doc.get("current")
        if isinstance(cur, dict):
            return [Op(base, r["key"], "get", inv, comp, cur.get("value"), None, "ok", cur.get("version"))]
        return [Op(base, r["key"], "get", inv, comp, None, None, "not_found")]
    if kind == "put":
        version = None if unknown else doc.get("version")
        out.append(Op(base, r["key"], "put", inv, comp, r["value"], r.get("expected_version"), "ok", version))
    elif kind == "delete":
        result = "not_found" if status == 404 else "ok"
        out.append(Op(base, r["key"], "delete", inv, comp, None, r.get("expected_version"), result))
    elif kind == "txn":
        results = [] if unknown else doc.get("results", [])
        for i, (key, op) in enumerate(zip(r["keys"], r["value"], strict=True)):
            if i < len(results) and results[i].get("superseded"):
                continue  # this part was skipped (last-writer-wins)
            version = results[i].get("version") if i < len(results) else None
            out.append(Op(base + i, key, "put", inv, comp, op["value"], op.get("expected_version"), "ok", version))
    elif kind == "read" and not unknown:
        if status == 404:
            out.append(Op(base, r["key"], "get", inv, comp, None, None, "not_found"))
        else:
            out.append(Op(base, r["key"], "get", inv, comp, doc.get("value"), None, "ok", doc.get("version")))
    elif kind == "list" and not unknown:
        present = {i["key"]: i for i in doc.get("items", [])}
        for j, key in enumerate(r["keys"]):
            item = present.get(key)
            if item is None:
                out.append(Op(base + j, key, "get", inv, comp, None, None, "not_found"))
            else:
                out.append(Op(base + j, key, "get", inv, comp, item["value"], None, "ok", item["version"]))
    return out


def check_linearizable(ops: list[dict[str, Any]], budget: int = 2_000_000) -> list[Anomaly]:
    try:
        verdicts = check(linearizability_ops(ops), budget=budget)
    except SearchBudgetExceeded as exc:
        return [{"check": "linearizability", "detail": f"undecided: {exc}"}]
    return [{"check": "linearizability", "detail": f"key {v.key}: {v.detail}"} for v in verdicts if not v.ok]


# -- the final logs ----------------------------------------------------------------


def _log_index(final: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    return {(rec["revision"], rec["key"]): rec for rec in final["records"]}


def check_acknowledged_writes(ops: list[dict[str, Any]], final: dict[str, Any]) -> list[Anomaly]:
    index = _log_index(final)
    node = final["node"]
    missing: list[str] = []
    for r in ops:
        if r["outcome"] != "ok" or r["kind"] not in ("put", "delete", "txn"):
            continue
        rev = r["result"]["revision"]
        if r["result"].get("superseded"):
            continue  # answered as skipped: nothing to find
        if r["kind"] == "txn":
            skipped = {i for i, x in enumerate(r["result"].get("results", [])) if x.get("superseded")}
            wanted = [
                (k, "put", op["value"])
                for i, (k, op) in enumerate(zip(r["keys"], r["value"], strict=True))
                if i not in skipped
            ]
        elif r["kind"] == "put":
            wanted = [(r["key"], "put", r["value"])]
        else:
            wanted = [(r["key"], "delete", None)]
        for key, op, value in wanted:
            rec = index.get((rev, key))
            if rec is None or rec["op"] != op or (op == "put" and rec["value"] != value):
                found = "nothing" if rec is None else f"{rec['op']} {rec.get('value')!r}"
                missing.append(f"op {r['id']} ({r['kind']} {key}) answered 200 at revision {rev}, log has {found}")
    if not missing:
        return []
    more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
    return [{"check": "acknowledged_writes", "detail": f"on {node}: " + "; ".join(missing[:10]) + more}]


def check_phantom_writes(ops: list[dict[str, Any]], final: dict[str, Any]) -> list[Anomaly]:
    by_id = {r["id"]: r for r in ops}
    out: list[str] = []
    applied: Counter[tuple[int, int]] = Counter()
    for rec in final["records"]:
        if rec["op"] != "put":
            continue
        value = rec.get("value")
        op_id = value.get("op") if isinstance(value, dict) else None
        r = by_id.get(op_id) if isinstance(op_id, int) else None
        if r is None:
            out.append(f"revision {rec['revision']} {rec['key']}: value {value!r} was never written by a client")
            continue
        part = value.get("i", 0)
        applied[(op_id, part)] += 1
        expected_key = r["keys"][part] if r["kind"] == "txn" else r["key"]
        if rec["key"] != expected_key:
            out.append(f"revision {rec['revision']}: op {op_id}'s value landed on {rec['key']}, not {expected_key}")
        if r["outcome"] == "fail":
            out.append(
                f"revision {rec['revision']} {rec['key']}: op {op_id} was refused "
                f"({r.get('status')} {r.get('error')}) but its write is in the log"
            )
    out += [f"op {op_id} (part {part}) applied {n} times" for (op_id, part), n in applied.items() if n > 1]
    # A transaction is all or nothing, at one revision.
    revisions: dict[int, set[int]] = defaultdict(set)
    for rec in final["records"]:
        w = _written_by(rec)
        if w is not None:
            revisions[w[0]].add(rec["revision"])
    for op_id, revs in revisions.items():
        r = by_id.get(op_id)
        if r is None or r["kind"] != "txn":
            continue
        skipped = 0
        if isinstance(r.get("result"), dict):
            skipped = sum(1 for x in r["result"].get("results", []) if x.get("superseded"))
        present = sum(1 for part in range(len(r["keys"])) if applied[(op_id, part)])
        if len(revs) > 1 or present not in (0, len(r["keys"]) - skipped):
            out.append(f"transaction op {op_id}: {present} of {len(r['keys'])} parts in the log, at revisions {revs}")
    return [{"check": "phantom_writes", "detail": f"on {final['node']}: {d}"} for d in out[:20]]


def check_state_matches_log(finals: list[dict[str, Any]]) -> list[Anomaly]:
    out: list[Anomaly] = []
    for final in finals:
        state: dict[str, dict[str, Any]] = {}
        versions: dict[str, int] = defaultdict(int)
        for rec in sorted(final["records"], key=lambda x: x["revision"]):
            if rec["op"] == "put":
                versions[rec["key"]] += 1
                state[rec["key"]] = {"value": rec["value"], "version": versions[rec["key"]]}
                state[rec["key"]]["mod_revision"] = rec["revision"]
            else:
                state.pop(rec["key"], None)
                versions[rec["key"]] = 0
        items = {k: {f: v[f] for f in ("value", "version", "mod_revision")} for k, v in final["items"].items()}
        if items != state:
            diff = sorted(k for k in set(items) | set(state) if items.get(k) != state.get(k))
            out.append(
                {
                    "check": "state_matches_log",
                    "detail": f"on {final['node']}: keys {diff[:5]} differ from what its log says, e.g. "
                    f"{diff[0]}: state {items.get(diff[0])!r}, log {state.get(diff[0])!r}",
                }
            )
    return out


class LogState:
    """The state of every key at any revision, rebuilt from a log."""

    def __init__(self, log: list[dict[str, Any]]) -> None:
        self.changes: dict[str, list[tuple[int, dict[str, Any] | None]]] = defaultdict(list)
        versions: dict[str, int] = defaultdict(int)
        for rec in sorted(log, key=lambda x: x["revision"]):
            key = rec["key"]
            if rec["op"] == "put":
                versions[key] += 1
                item = {"value": rec["value"], "version": versions[key], "mod_revision": rec["revision"]}
                self.changes[key].append((rec["revision"], item))
            else:
                versions[key] = 0
                self.changes[key].append((rec["revision"], None))
        self.revs = {k: [rev for rev, _ in v] for k, v in self.changes.items()}

    def at(self, key: str, revision: int) -> dict[str, Any] | None:
        i = bisect.bisect_right(self.revs.get(key, []), revision)
        return self.changes[key][i - 1][1] if i else None


def check_reads_match_log(ops: list[dict[str, Any]], final: dict[str, Any]) -> list[Anomaly]:
    state = LogState(final["records"])
    out: list[Anomaly] = []

    def item(doc: dict[str, Any]) -> dict[str, Any]:
        return {f: doc.get(f) for f in ("value", "version", "mod_revision")}

    # A local read on a node with a queued write of the key shows that
    # write's value, `pending` (API.md): it must be one that node queued
    # before the read answered.
    queued: dict[tuple[str, str], list[tuple[float, Any]]] = defaultdict(list)
    for r in ops:
        if r.get("offline") and r["kind"] == "put" and r.get("key"):
            queued[(r["node"], r["key"])].append((r["invoke"], r["value"]))

    def pending_ok(r: dict[str, Any], key: str, doc: dict[str, Any]) -> bool:
        done = r.get("complete") or r["invoke"]
        return any(t <= done and v == doc.get("value") for t, v in queued.get((r["node"], key), []))

    for r in ops:
        if r["kind"] not in ("read", "read_local", "list") or r["outcome"] != "ok":
            continue
        doc = r["result"]
        if r["kind"] == "read_local" and isinstance(doc, dict) and doc.get("pending"):
            if not pending_ok(r, r["key"], doc):
                out.append(
                    {
                        "check": "reads_match_log",
                        "detail": f"op {r['id']} read_local on {r['node']}: pending value {doc.get('value')!r} "
                        f"of {r['key']} was queued there by no write",
                    }
                )
            continue
        rev = doc.get("revision")
        if not isinstance(rev, int):
            out.append({"check": "reads_match_log", "detail": f"op {r['id']}: answer without a revision: {doc!r}"})
            continue
        if r["kind"] == "list":
            got = {i["key"]: item(i) for i in doc.get("items", [])}
            want = {k: v for k in r["keys"] if (v := state.at(k, rev)) is not None}
        else:
            got, want = item(doc), state.at(r["key"], rev)
        if got != want:
            out.append(
                {
                    "check": "reads_match_log",
                    "detail": f"op {r['id']} {r['kind']} on {r['node']} at revision {rev}: read {got!r}, "
                    f"the log gives {want!r}",
                }
            )
    return out[:20]


def check_watches(watches: list[dict[str, Any]], final: dict[str, Any]) -> list[Anomaly]:
    log = sorted(final["records"], key=lambda x: x["revision"])  # stable: keeps a revision's order
    out: list[Anomaly] = []
    log_last = log[-1]["revision"] if log else 0
    for w in watches:
        events = w["events"]
        error = w.get("error") or ""
        if "compacted" in error:
            out.append({"check": "watches", "detail": f"session {w['id']} on {w['node']}: {error}"})
        if w.get("final") and (error or (events[-1]["revision"] if events else 0) != log_last):
            reached = events[-1]["revision"] if events else 0
            out.append(
                {
                    "check": "watches",
                    "detail": f"the full watch on {w['node']} stopped at revision {reached} of {log_last}: "
                    f"{error or 'no more events'}",
                }
            )
        if not events:
            continue
        last = events[-1]["revision"]
        expected = [
            {k: rec.get(k) for k in ("revision", "key", "op", "value")}
            for rec in log
            if w["since"] <= rec["revision"] <= last and rec["key"].startswith(w["prefix"])
        ]
        got = [{k: e.get(k) for k in ("revision", "key", "op", "value")} for e in events]
        ok = got == expected[: len(got)] and all(rec["revision"] == last for rec in expected[len(got) :])
        if not ok:
            first_bad = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), min(len(got), len(expected))
            )
            seen = got[first_bad] if first_bad < len(got) else "end of stream"
            want = expected[first_bad] if first_bad < len(expected) else "nothing"
            out.append(
                {
                    "check": "watches",
                    "detail": f"session {w['id']} on {w['node']} from revision {w['since']}: event {first_bad} "
                    f"is {seen}, the log has {want} ({len(got)} events delivered, {len(expected)} in the log)",
                }
            )
    return out


def check_convergence(finals: list[dict[str, Any]]) -> list[Anomaly]:
    fingerprints = {f["node"]: (f["applied_index"], f["digest"]) for f in finals}
    out: list[Anomaly] = []
    if len(set(fingerprints.values())) > 1:
        shown = ", ".join(f"{n}: applied {a} digest {d[:12]}" for n, (a, d) in sorted(fingerprints.items()))
        out.append({"check": "convergence", "detail": f"replicas differ: {shown}"})
    reference = finals[0]
    for f in finals[1:]:
        if f["records"] != reference["records"] or f["items"] != reference["items"]:
            out.append(
                {
                    "check": "convergence",
                    "detail": f"{f['node']}'s state or log differs from {reference['node']}'s",
                }
            )
    return out


def check_ca_rolls(records: list[dict[str, Any]]) -> list[Anomaly]:
    """Every CA roll a rotate_ca fault started (faults.py) ended in time."""
    return [
        {"check": "ca_roll", "detail": f"fault {r.get('id')}: {r['roll'].get('error') or 'the CA roll did not end'}"}
        for r in records
        if r["type"] == "fault" and isinstance(r.get("roll"), dict) and not r["roll"].get("done")
    ]


def check_statuses(ops: list[dict[str, Any]]) -> list[Anomaly]:
    def expected(r: dict[str, Any]) -> set[int]:
        # An offline write may be kept in the outbox: 202.
        return EXPECTED_STATUSES[r["kind"]] | ({202} if r.get("offline") else set())

    bad = [r for r in ops if r.get("status") is not None and r["status"] not in expected(r)]
    return [
        {
            "check": "unexpected_status",
            "detail": f"op {r['id']} {r['kind']} on {r['node']}: {r['status']} {r.get('error')}: "
            f"{str(r.get('result'))[:200]}",
        }
        for r in bad[:20]
    ]


# -- hostile neighbours ---------------------------------------------------------------


def check_hostile(records: list[dict[str, Any]]) -> list[Anomaly]:
    """The checks of a `--hostile` run (see the module docstring); nothing
    to say about a run without hostile neighbours."""
    meta = next((r for r in records if r["type"] == "meta"), {})
    attempts = [r for r in records if r["type"] == "hostile"]
    scans = [r for r in records if r["type"] == "scan"]
    out: list[Anomaly] = []
    if (meta.get("args") or {}).get("hostile"):
        scanned = {s["node"] for s in scans if not s.get("error")}
        missing = [n for n in meta.get("nodes") or [] if n not in scanned]
        if missing:
            errors = "; ".join(f"{s['node']}: {s['error']}" for s in scans if s.get("error"))
            out.append(
                {
                    "check": "hostile_state",
                    "detail": f"no final scan of {', '.join(missing)}: cannot tell whether hostile writes "
                    f"changed state there ({errors or 'not collected'})",
                }
            )
    hits = marker_hits(records)
    if hits:
        places = Counter(where for where, _ in hits)
        examples: dict[str, str] = {}
        for where, path in hits:
            examples.setdefault(where.split(" ", 1)[1].split(" ")[0], f"{where}{path}")
        kinds = sorted({m.group(1) for _, path in hits if (m := _HOSTILE_KEY.search(path))})
        out.append(
            {
                "check": "hostile_state",
                "detail": f"{len(hits)} traces of what hostile neighbours sent"
                + (f" (keys written by {', '.join(kinds)})" if kinds else "")
                + ", in "
                + ", ".join(f"{w} x{n}" for w, n in places.most_common())
                + "; e.g. "
                + "; ".join(list(examples.values())[:6]),
            }
        )
    return out + check_hostile_attempts(attempts)


def marker_hits(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Where the hostile marker (or a key under the hostile prefix) appears
    in what the nodes hold, as (node and part, path and text): the final
    scans, the final states and the watch sessions. Failed-login events of
    the audit trail are left out: they record the attempt (its path),
    which is what they are for."""
    hits: list[tuple[str, str]] = []
    for r in records:
        if r["type"] == "scan":
            audit = [e for e in r.get("audit") or [] if not (isinstance(e, dict) and e.get("op") == "security_event")]
            for part, doc in (
                ("state", r.get("items")),
                ("history", r.get("records")),
                ("audit", audit),
                ("members", r.get("members")),
            ):
                hits += _marked(doc, f"{r['node']} {part}")
        elif r["type"] == "final":
            hits += _marked({"items": r.get("items"), "records": r.get("records")}, f"{r['node']} final")
        elif r["type"] == "watch":
            hits += _marked(r.get("events"), f"{r['node']} watch {r.get('id')}")
    return hits


_HOSTILE_KEY = re.compile(re.escape(HOSTILE_PREFIX) + r"([A-Za-z_]+)/")


def _is_marked(text: str) -> bool:
    return MARKER in text or text.startswith(HOSTILE_PREFIX)


def _marked(doc: Any, where: str) -> list[tuple[str, str]]:
    """(where, path: text) of every marked string (dict keys included) in
    `doc`; a list element with a key or revision is named by them.
    Iterative: values may be nested far deeper than recursion likes."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        obj, path = stack.pop()
        if isinstance(obj, str):
            if _is_marked(obj):
                out.append((where, f"{path}: {obj[:80]!r}"))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(k, str) and _is_marked(k):
                    out.append((where, f"{path}: key {k[:80]!r}"))
                stack.append((v, f"{path}.{k}"))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                label = str(i)
                if isinstance(v, dict) and ("key" in v or "revision" in v):
                    label = " ".join(str(v[f]) for f in ("revision", "key") if f in v)
                stack.append((v, f"{path}[{label}]"))
    return out


def _statuses(attempts: list[dict[str, Any]]) -> str:
    counts = Counter(f"{a.get('status')}" + (f" {a['code']}" if a.get("code") else "") for a in attempts)
    return ", ".join(f"{s} x{n}" for s, n in counts.most_common())


def check_hostile_attempts(attempts: list[dict[str, Any]]) -> list[Anomaly]:
    """Per attack kind: attempts let through, refused the wrong way, peer
    breaches, slow-header connections held, harness errors."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in attempts:
        by_kind[str(a.get("kind"))].append(a)
    out: list[Anomaly] = []
    for kind, tries in sorted(by_kind.items()):
        answered = [a for a in tries if a.get("outcome") == "answered" and isinstance(a.get("status"), int)]
        accepted = [a for a in answered if 200 <= a["status"] < 300 or a["status"] == 101]
        if accepted:
            e = accepted[0]
            out.append(
                {
                    "check": "hostile_accepted",
                    "detail": f"{kind}: {len(accepted)} of {len(tries)} attempts were let through "
                    f"({_statuses(accepted)}), e.g. on {e['node']}: {str(e.get('detail'))[:120]}",
                }
            )
        if kind in REFUSED_WITH:
            wrong = [
                a
                for a in answered
                if a not in accepted and (a["status"] not in REFUSED_WITH[kind] or a.get("json_error") is False)
            ]
            if wrong:
                e = wrong[0]
                want = "/".join(str(s) for s in sorted(REFUSED_WITH[kind]))
                out.append(
                    {
                        "check": "hostile_refusal",
                        "detail": f"{kind}: {len(wrong)} attempts answered {_statuses(wrong)}, not {want} with a "
                        f"JSON error, e.g. on {e['node']}: {str(e.get('detail'))[:120]}",
                    }
                )
        breaches = [a for a in tries if a.get("outcome") in PEER_BREACHES.get(kind, ())]
        if breaches:
            e = breaches[0]
            out.append(
                {
                    "check": "hostile_peer",
                    "detail": f"{kind}: {len(breaches)} of {len(tries)} attempts {e['outcome']}, "
                    f"e.g. on {e['node']}: {str(e.get('detail'))[:160]}",
                }
            )
        if kind == "slow_header":
            held = [a for a in tries if a.get("outcome") == "held"]
            if held:
                out.append(
                    {
                        "check": "hostile_slow_header",
                        "detail": f"{len(held)} of {len(tries)} slow-header connections were held by the node: "
                        f"{held[0].get('detail')} (on {held[0]['node']})",
                    }
                )
        broken = [a for a in tries if a.get("outcome") == "harness_error"]
        if broken:
            out.append({"check": "harness", "detail": f"hostile {kind}: {broken[0].get('detail')}"})
    return out
