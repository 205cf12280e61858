"""Offline writers in a chaos run, and the checker of their fates
(API.md "A node cut off from the controller").

An offline writer is a client that writes with `?offline=queue`, mostly to
its home node: when the fault proxy cuts that node off, its writes are
kept in the node's outbox (202 `{"queued": id, …}`) and replayed when the
node hears a controller again. It writes keys of the workload's prefix
(the `parameters` component: last writer wins) and keys under
MANUAL_PREFIX (`settings`: manual policy, critical), where a replayed
write to a key changed meanwhile becomes a conflict. Now and then it
resolves an open conflict, taking the current value, the proposed one or a
value of its own (unique, like every written value).

History records (history.py): an offline write is an `op` record with
`"offline": true`, outcome "queued" when answered 202; a resolve is an
`op` of kind "resolve" with `conflict`, `take` and `value` (the value it
makes visible when it takes "proposed" or "value"). After the run, each
node's outbox, conflicts and manual-prefix state and history are an
`offline` record: `{"type":"offline","node","outbox":[items],
"conflicts":[…],"items":{key: {value,version,mod_revision}},"records":[…],
"error"}`.

The fates checked (check_offline):
- every queued write reaches exactly one final fate: its node's outbox
  holds exactly one item with its id, in a final state (`offline_fate`);
- a `superseded` or `rejected` write is never visible: its value is in no
  node's history or state (`offline_visible`);
- a `conflict` write is visible only after a resolve that takes it: its
  value appears only at the revision of a resolve of its conflict taking
  "proposed" (`offline_visible`);
- an `applied` one is in the log once (`offline_applied`), and, projected
  as a write of unknown outcome (project_fates), linearizable with the
  rest on the workload's keys (checks.py);
- every value under MANUAL_PREFIX comes from a write that was not refused,
  once (`offline_phantom`); all nodes agree on the conflict set and a
  resolve answered 200 closed its conflict everywhere (`offline_conflicts`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from simulations.chaoskit.history import HistoryWriter
from simulations.chaoskit.workload import _call, _pause, no_silent_retries, op_record

MANUAL_PREFIX = "settings/chaos/"
FINAL_STATES = frozenset({"applied", "superseded", "conflict", "rejected"})
TAKES = ("current", "proposed", "value")
CLIENT_BASE = 100  # offline writers' client numbers: 100, 101, …
HOME_SHARE = 0.9
RESOLVE_SHARE = 0.12
MANUAL_SHARE = 0.5

Anomaly = dict[str, str]


def is_manual(record: dict[str, Any]) -> bool:
    """An op on a key under MANUAL_PREFIX (or a resolve): not part of the
    workload's registers."""
    key = record.get("key")
    return record.get("kind") == "resolve" or (isinstance(key, str) and key.startswith(MANUAL_PREFIX))


class OfflineWriters:
    """`count` offline writers (see the module docstring), each with a home node."""

    def __init__(
        self,
        seed: int,
        apis: dict[str, str],
        writer: HistoryWriter,
        clock: Callable[[], float],
        op_ids: itertools.count[int],
        lww_keys: list[str],
        count: int,
        manual_keys: int = 3,
        think: float = 0.05,
        request_timeout: float = 7.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.seed = seed
        self.apis = apis
        self.writer = writer
        self.clock = clock
        self.op_ids = op_ids
        self.lww_keys = lww_keys
        self.manual_keys = [f"{MANUAL_PREFIX}m{i}" for i in range(manual_keys)]
        self.count = count
        self.think = think
        self.request_timeout = request_timeout
        self.headers = dict(headers or {})
        self.outcomes: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, connect=1.0)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session:
            no_silent_retries(session)
            async with asyncio.TaskGroup() as group:
                for c in range(self.count):
                    group.create_task(self._client(session, c, stop))

    async def _client(self, session: aiohttp.ClientSession, c: int, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed * 7_919 + c)
        nodes = list(self.apis)
        # The last nodes first: the first node often leads, and a writer
        # whose home is cut off is the point.
        home = nodes[-1 - (c % len(nodes))]
        while not stop.is_set():
            node = home if rng.random() < HOME_SHARE else rng.choice(nodes)
            if rng.random() < RESOLVE_SHARE:
                await self._resolve(session, CLIENT_BASE + c, rng, node)
            else:
                await self._write(session, CLIENT_BASE + c, rng, node)
            await _pause(stop, rng.uniform(0, self.think))

    async def _write(self, session: aiohttp.ClientSession, client: int, rng: random.Random, node: str) -> None:
        op_id = next(self.op_ids)
        key = rng.choice(self.manual_keys if rng.random() < MANUAL_SHARE else self.lww_keys)
        value = {"op": op_id, "c": client}
        record = op_record(op_id, client, node, "put", key, value=value, offline=True, invoke=self.clock())
        url = f"http://{self.apis[node]}/v1/kv/{quote(key, safe='/')}"
        answer = await _call(session, "PUT", url, {"value": value}, {"offline": "queue"})
        outcome = answer.outcome
        if outcome == "ok" and answer.status == 202:
            outcome = "queued"
        record["complete"] = None if outcome == "unknown" else self.clock()
        record.update(outcome=outcome, status=answer.status, error=answer.error, result=answer.doc)
        self.writer.write(record)
        self.outcomes[outcome] += 1

    async def _resolve(self, session: aiohttp.ClientSession, client: int, rng: random.Random, node: str) -> None:
        base = f"http://{self.apis[node]}"
        listing = await _call(session, "GET", f"{base}/v1/conflicts", None, None)
        if listing.outcome != "ok" or not isinstance(listing.doc, dict):
            return
        open_ = [x for x in listing.doc.get("conflicts") or [] if isinstance(x, dict) and x.get("status") == "open"]
        if not open_:
            return
        conflict = rng.choice(open_)
        take = rng.choice(TAKES)
        op_id = next(self.op_ids)
        body: dict[str, Any] = {"take": take}
        shown: Any = None
        if take == "value":
            shown = body["value"] = {"op": op_id, "c": client, "resolve": True}
        elif take == "proposed":
            shown = (conflict.get("proposed") or {}).get("value")
        record = op_record(
            op_id,
            client,
            node,
            "resolve",
            conflict.get("key"),
            conflict=conflict.get("id"),
            take=take,
            value=shown,
            invoke=self.clock(),
        )
        url = f"{base}/v1/conflicts/{quote(str(conflict.get('id')), safe='')}/resolve"
        answer = await _call(session, "POST", url, body, None)
        record["complete"] = None if answer.outcome == "unknown" else self.clock()
        record.update(outcome=answer.outcome, status=answer.status, error=answer.error, result=answer.doc)
        self.writer.write(record)
        self.outcomes[f"resolve_{answer.outcome}"] += 1


# -- after the run ------------------------------------------------------------------------


async def _get_json(session: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None) -> Any:
    async with session.get(url, params=params) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {raw[:200]!r}")
        return orjson.loads(raw)


async def drain(apis: dict[str, str], headers: dict[str, str], timeout: float) -> list[str]:
    """Wait until no node's outbox holds a write that is not final yet;
    the nodes whose outbox did not drain within `timeout` (with why)."""
    deadline = time.monotonic() + timeout
    left: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=headers) as session:
        while True:
            left = []
            for nid, api in apis.items():
                try:
                    doc = await _get_json(session, f"http://{api}/v1/outbox")
                except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                    left.append(f"{nid} ({exc})")
                    continue
                waiting = [i for i in doc.get("items") or [] if i.get("state") not in FINAL_STATES]
                if waiting:
                    first = waiting[0]
                    left.append(f"{nid} ({len(waiting)} not final, e.g. {first.get('id')} {first.get('state')})")
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.3)  # polling a condition with a deadline


async def collect(apis: dict[str, str], headers: dict[str, str]) -> list[dict[str, Any]]:
    """One `offline` record per node (see the module docstring)."""
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=headers) as session:
        for nid, api in apis.items():
            base = f"http://{api}"
            record: dict[str, Any] = {"type": "offline", "node": nid, "error": None}
            try:
                record["outbox"] = (await _get_json(session, f"{base}/v1/outbox")).get("items") or []
                everything = {"status": "all"}  # resolved ones too
                record["conflicts"] = (await _get_json(session, f"{base}/v1/conflicts", everything)).get(
                    "conflicts"
                ) or []
                local = {"prefix": MANUAL_PREFIX, "consistency": "local"}
                items = await _get_json(session, f"{base}/v1/kv", local)
                hist = await _get_json(session, f"{base}/v1/history", local)
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
                out.append(record)
                continue
            record["items"] = {
                i["key"]: {"value": i["value"], "version": i["version"], "mod_revision": i["mod_revision"]}
                for i in items.get("items") or []
            }
            record["records"] = [{k: r.get(k) for k in ("revision", "key", "op", "value")} for r in hist["records"]]
            out.append(record)
    return out


# -- the checker ------------------------------------------------------------------------------


def fates(ops: list[dict[str, Any]], offline: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """op id -> the outbox items (on its node) carrying its queued id."""
    by_node: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for rec in offline:
        for item in rec.get("outbox") or []:
            by_node[rec["node"]][str(item.get("id"))].append(item)
    out: dict[int, list[dict[str, Any]]] = {}
    for r in ops:
        if r.get("outcome") == "queued":
            qid = (r.get("result") or {}).get("queued")
            out[r["id"]] = list(by_node.get(r["node"], {}).get(str(qid), []))
    return out


def _fate(items: list[dict[str, Any]]) -> str | None:
    states = [i.get("state") for i in items]
    return states[0] if len(states) == 1 and states[0] in FINAL_STATES else None


def _resolves(ops: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ops:
        if r.get("kind") == "resolve" and r.get("outcome") in ("ok", "unknown"):
            out[str(r.get("conflict"))].append(r)
    return out


def _conflict_id(items: list[dict[str, Any]]) -> str | None:
    """The conflict a queued write became: its result's `conflict` (or the
    state machine's `conflict_kept` error's `conflict_id`)."""
    result = items[0].get("result") if items else None
    if not isinstance(result, dict):
        return None
    err = result.get("error") if isinstance(result.get("error"), dict) else {}
    cid = result.get("conflict", err.get("conflict_id"))
    return None if cid is None else str(cid)


def project_fates(ops: list[dict[str, Any]], offline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ops as the workload's checks (checks.py) understand them: those
    on the workload's keys only (not under MANUAL_PREFIX, no resolves); a
    queued write by its fate: applied (or a conflict resolved by taking
    it) is a write of unknown outcome (the log tells when it happened);
    superseded, rejected or an unresolved conflict did nothing (a definite
    refusal, so its value in the log is a phantom); no fate: unknown."""
    found = fates(ops, offline)
    taken = {c for c, rs in _resolves(ops).items() if any(r.get("take") == "proposed" for r in rs)}
    out = []
    for r in ops:
        if is_manual(r):
            continue
        if r.get("outcome") != "queued":
            out.append(r)
            continue
        items = found.get(r["id"], [])
        fate = _fate(items)
        if fate is None or fate == "applied" or (fate == "conflict" and _conflict_id(items) in taken):
            out.append({**r, "outcome": "unknown", "complete": None, "queued_fate": fate})
        else:
            out.append({**r, "outcome": "fail", "status": None, "error": fate, "queued_fate": fate})
    return out


def _visible(finals: list[dict[str, Any]], offline: list[dict[str, Any]]) -> dict[int, list[tuple[str, int, str]]]:
    """op id -> where its value is: (node, revision, key) in each node's
    history and state, under both prefixes."""
    out: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
    for rec in [*finals, *(o for o in offline if not o.get("error"))]:
        node = rec["node"]
        seen: set[int] = set()
        for h in rec.get("records") or []:
            value = h.get("value")
            if h.get("op") == "put" and isinstance(value, dict) and isinstance(value.get("op"), int):
                out[value["op"]].append((node, h["revision"], h["key"]))
                seen.add(value["op"])
        for key, item in (rec.get("items") or {}).items():
            value = item.get("value")
            if isinstance(value, dict) and isinstance(value.get("op"), int) and value["op"] not in seen:
                # In the state but in no history record: visible all the same.
                out[value["op"]].append((node, item.get("mod_revision", -1), key))
    return out


def check_offline(records: list[dict[str, Any]]) -> list[Anomaly]:
    """The fates of offline writes and conflicts (see the module docstring)."""
    ops = [r for r in records if r["type"] == "op"]
    offline = [r for r in records if r["type"] == "offline"]
    finals = [r for r in records if r["type"] == "final"]
    queued = [r for r in ops if r.get("outcome") == "queued"]
    resolving = [r for r in ops if r.get("kind") == "resolve"]
    if not queued and not resolving and not offline:
        return []
    out: list[Anomaly] = []
    broken = [f"{o['node']}: {o['error']}" for o in offline if o.get("error")]
    if broken:
        out.append({"check": "offline_fate", "detail": "no outbox or conflicts collected from " + "; ".join(broken)})
    found = fates(ops, offline)
    fate_of: dict[int, str | None] = {}
    for r in queued:
        items = found.get(r["id"], [])
        fate_of[r["id"]] = _fate(items)
        if fate_of[r["id"]] is None:
            states = [i.get("state") for i in items] or ["no item"]
            qid = (r.get("result") or {}).get("queued")
            out.append(
                {
                    "check": "offline_fate",
                    "detail": f"op {r['id']} (queued as {qid} on {r['node']}, {r['key']}): "
                    f"not exactly one final fate: {', '.join(map(str, states))}",
                }
            )
    resolve_revs = {
        (r.get("result") or {}).get("revision")
        for r in resolving
        if r.get("outcome") == "ok" and isinstance(r.get("result"), dict)
    }
    visible = _visible(finals, offline)
    resolves = _resolves(ops)
    for r in queued:
        fate, where = fate_of[r["id"]], visible.get(r["id"], [])
        if fate in ("superseded", "rejected") and where:
            out.append(
                {
                    "check": "offline_visible",
                    "detail": f"op {r['id']} ({r['key']}) was {fate}, yet its value is visible: "
                    + ", ".join(f"{n} rev {rev} {k}" for n, rev, k in where[:4]),
                }
            )
        elif fate == "conflict" and where:
            cid = _conflict_id(found[r["id"]])
            taking = [x for x in resolves.get(str(cid), []) if x.get("take") == "proposed"]
            revs = {(x.get("result") or {}).get("revision") for x in taking if x.get("outcome") == "ok"}
            unknown = any(x.get("outcome") == "unknown" for x in taking)
            bad = [w for w in where if not (w[1] in revs or unknown)]
            if bad or not taking:
                out.append(
                    {
                        "check": "offline_visible",
                        "detail": f"op {r['id']} ({r['key']}) became conflict {cid}, yet its value is visible "
                        f"without a resolve that takes it: "
                        + ", ".join(f"{n} rev {rev}" for n, rev, _ in (bad or where)[:4])
                        + (f" (resolves taking it answered at revisions {sorted(map(str, revs))})" if taking else ""),
                    }
                )
        elif fate == "applied":
            # A resolve taking the current side may write it again, at its
            # revision: not a second apply. But a resolve that writes nothing
            # answers the store's revision, which may be this very apply's
            # (seed 1414 of tests/chaos/test_offline_chaos.py): present counts
            # every record, twice only those at no resolve's revision.
            present = Counter(n for n, _, _ in where)
            again = Counter(n for n, rev, _ in where if rev not in resolve_revs)
            nodes = {o["node"] for o in offline if not o.get("error")} | {f["node"] for f in finals}
            missing = sorted(n for n in nodes if present[n] == 0)
            twice = sorted(n for n, k in again.items() if k > 1)
            if missing or twice:
                out.append(
                    {
                        "check": "offline_applied",
                        "detail": f"op {r['id']} ({r['key']}) was applied, but its value is "
                        + (f"missing on {', '.join(missing)}" if missing else f"applied twice on {', '.join(twice)}"),
                    }
                )
    out += _check_manual_phantoms(ops, offline, fate_of, found)
    out += _check_conflict_sets(ops, offline)
    return out


def _check_manual_phantoms(
    ops: list[dict[str, Any]],
    offline: list[dict[str, Any]],
    fate_of: dict[int, str | None],
    found: dict[int, list[dict[str, Any]]],
) -> list[Anomaly]:
    """Every value under MANUAL_PREFIX in a node's history comes from a
    write that was not refused, once (a resolve that takes a side may
    write that side's value again, at its own revision)."""
    by_id = {r["id"]: r for r in ops}
    resolve_revs = {
        (r.get("result") or {}).get("revision")
        for r in ops
        if r.get("kind") == "resolve" and r.get("outcome") == "ok" and isinstance(r.get("result"), dict)
    }
    out: list[str] = []
    for rec in offline:
        if rec.get("error"):
            continue
        count: Counter[int] = Counter()
        for h in rec.get("records") or []:
            value = h.get("value")
            if h.get("op") != "put":
                continue
            op_id = value.get("op") if isinstance(value, dict) else None
            r = by_id.get(op_id) if isinstance(op_id, int) else None
            where = f"{rec['node']} rev {h['revision']} {h['key']}"
            if r is None:
                out.append(f"{where}: value {value!r} was never written by a client")
                continue
            if h["revision"] not in resolve_revs:
                count[op_id] += 1
            kept = r.get("error") == "conflict_kept" and h["revision"] in resolve_revs  # resolved by taking it
            if r["outcome"] == "fail" and not kept:
                out.append(f"{where}: op {op_id} was refused ({r.get('status')} {r.get('error')}) but is in the log")
            if r.get("kind") == "resolve" and r.get("take") != "value":
                out.append(f"{where}: resolve op {op_id} took {r.get('take')} yet its own value is in the log")
        out += [f"{rec['node']}: op {i}'s value is in the log {n} times" for i, n in count.items() if n > 1]
    return [{"check": "offline_phantom", "detail": d} for d in out[:20]]


def _check_conflict_sets(ops: list[dict[str, Any]], offline: list[dict[str, Any]]) -> list[Anomaly]:
    got = [o for o in offline if not o.get("error")]
    out: list[Anomaly] = []
    sets = {
        o["node"]: sorted((str(c.get("id")), str(c.get("key")), str(c.get("status"))) for c in o.get("conflicts") or [])
        for o in got
    }
    if len({tuple(s) for s in sets.values()}) > 1:
        shown = "; ".join(
            f"{n}: {len(s)} conflicts, {sum(1 for x in s if x[2] == 'open')} open" for n, s in sets.items()
        )
        out.append({"check": "offline_conflicts", "detail": f"the nodes disagree on the conflict set: {shown}"})
    for r in ops:
        if r.get("kind") != "resolve" or r.get("outcome") != "ok":
            continue
        for node, s in sets.items():
            # A node may list open conflicts only: absent is closed.
            status = next((x[2] for x in s if x[0] == str(r.get("conflict"))), None)
            if status == "open":
                out.append(
                    {
                        "check": "offline_conflicts",
                        "detail": f"resolve op {r['id']} of conflict {r.get('conflict')} was answered 200, "
                        f"but on {node} the conflict is {status or 'unknown'}",
                    }
                )
                break
    return out[:20]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The offline figures of a run: writes queued, their fates, conflicts."""
    ops = [r for r in records if r["type"] == "op"]
    offline = [r for r in records if r["type"] == "offline"]
    writes = [r for r in ops if r.get("offline")]
    if not writes and not offline:
        return None
    found = fates(ops, offline)
    fate_counts = Counter(_fate(v) or "none" for v in found.values())
    conflicts = {str(c.get("id")): c for o in offline for c in o.get("conflicts") or []}
    return {
        "writes": len(writes),
        "answered": dict(Counter(str(r.get("outcome")) for r in writes)),
        "queued": sum(1 for r in writes if r.get("outcome") == "queued"),
        "fates": dict(fate_counts),
        "conflicts": len(conflicts),
        "conflicts_open": sum(1 for c in conflicts.values() if c.get("status") == "open"),
        "resolves": dict(Counter(str(r.get("outcome")) for r in ops if r.get("kind") == "resolve")),
    }
