"""Clients of the whole-node simulator, and the API edge they talk to.

Clients behave as the chaos run's clients and `mesh.client.MeshClient` do
against real nodes (simulations/chaoskit/workload.py): each has a home node
(80% of its requests) and does puts, conditional puts, deletes, conditional
deletes, transactions, linearizable and local reads and prefix reads, one at
a time with a pause between; every written value is unique (`{"op": <op id>,
"c": <client>}`), so a value in any log names the operation that wrote it.
Each answer is classified as a careful client must: "ok" (2xx), "fail" (a
definite refusal that changed nothing: the connection was refused, or
404/409/503), "unknown" (a timeout on the client's side, a connection that
dropped after the request was sent, or 504). No silent retry: a request
whose connection dropped is unknown (aiohttp's retry of a PUT is turned off,
CHANGELOG "Fixed"); after a 503 (nothing happened) a client tries the same
kind of write on the same key again at once, on another node. Request ids
are the node's business: the core stamps one on every write and keeps it
across its forwards' retries.

Watchers follow every change under the clients' prefix in sessions: one
node at a time for a while, then another, resuming from the last revision
they saw (inclusive: a transaction's records share one). A session ends with
an error when its node goes down.

The edge (`Edge`) does what mesh/api's routes do between HTTP and the node:
build the command, `kv.prepare` it, propose it through the core, and turn a
ticket's outcome into a status and a JSON document (503 NoLeader, 504
Timeout, the state machine's error codes through `ERROR_STATUS`), serve reads
after the read barrier from the node's state at that moment.

The history is recorded in the chaos run's format (simulations/chaoskit/
history.py) and checked by its checker (simulations/chaoskit/checks.py:
linearizability with simulations/linearizability.py, acknowledged and
phantom writes, reads against the log, watch streams without gaps,
duplicates or reordering, convergence, statuses).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import MeshError
from mesh.node.core import Ticket, WatchCursor
from mesh.state.errors import ERROR_STATUS
from mesh.state.kv import CommandError
from simulations.chaoskit.workload import HOME_SHARE, KINDS, WEIGHTS, _learn_versions, op_record
from simulations.sim.nodes import CRASHED, REMOVED, UP, NodeCluster, WholeNode
from simulations.sim.options import NodeOptions
from simulations.sim.world import SECOND, World

PREFIX = "parameters/sim/"


@dataclass(slots=True)
class Request:
    id: int
    client: int
    kind: str  # as recorded: put, delete, txn, read, read_local, list
    requested: str  # as drawn: put, cas, delete, cas_delete, ...
    node: str
    record: dict[str, Any]
    command: dict[str, Any] | None = None
    done: bool = False


@dataclass(slots=True)
class Session:
    id: int
    watcher: int
    node: str
    record: dict[str, Any]
    cursor: WatchCursor | None = None
    epoch: int = 0
    # Time the last event reaches the watcher (a WebSocket keeps order).
    last_at: int = 0
    pump_pending: bool = False
    closed: bool = False


@dataclass(slots=True)
class ClientStats:
    outcomes: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    watch_events: int = 0
    watch_sessions: int = 0


def answer_of(ticket: Ticket) -> tuple[int, dict[str, Any]]:
    """The status and JSON document the API answers for a write's ticket."""
    if ticket.error is not None:
        return ticket.error.status, ticket.error.body()
    result = ticket.result
    err = result.get("error") if isinstance(result, dict) else None
    if err is None:
        return 200, result
    return ERROR_STATUS.get(str(err.get("code", "error")), 400), {"error": err}


class Edge:
    """The API's part between a request and the node core (see the module
    docstring); answers go back through `reply(status, doc)`."""

    def __init__(self, world: World) -> None:
        self.world = world

    def serve(self, node: WholeNode, req: Request, reply: Callable[[int, dict[str, Any]], None]) -> None:
        core = node.core
        assert core is not None
        if req.command is not None:
            command = dict(req.command, author=f"client{req.client}", role="operator")
            try:
                command = core.kv.prepare(command)
                ticket = core.propose(command)
            except CommandError as exc:
                reply(ERROR_STATUS.get(exc.code, 400), {"error": {"code": exc.code, "message": str(exc)}})
                return
            except MeshError as exc:
                reply(exc.status, exc.body())
                return
            ticket.on_done = lambda t: reply(*answer_of(t))
            return
        linearizable = req.kind in ("read", "list")
        key = req.record["key"]

        def read_done(t: Ticket) -> None:
            if t.error is not None:
                reply(t.error.status, t.error.body())
                return
            kv = core.kv
            if req.kind == "list":
                items = [v.to_dict(k) for k, v in kv.range(PREFIX)]
                reply(200, {"revision": kv.revision, "items": items})
                return
            item = kv.get(key)
            if item is None:
                reply(404, {"error": {"code": "not_found", "message": f"key {key!r} does not exist"}})
            else:
                reply(200, {**item.to_dict(key), "revision": kv.revision})

        core.read(linearizable).on_done = read_done


class Clients:
    def __init__(self, world: World, cluster: NodeCluster, opts: NodeOptions) -> None:
        self.world = world
        self.cluster = cluster
        self.opts = opts
        self.edge = Edge(world)
        self.records: list[dict[str, Any]] = []
        self.stats = ClientStats()
        self.active = True
        self.keys = [f"{PREFIX}k{i}" for i in range(opts.keys)]
        self._op_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._seen: list[dict[str, int]] = [{} for _ in range(opts.clients)]
        # Its home node refused the last connection: go elsewhere for a while.
        self._away: list[bool] = [False] * opts.clients
        self._pending: dict[int, Request] = {}
        self._sessions: dict[int, Session] = {}
        self._resume: list[int] = [1] * opts.watchers
        cluster.on_applied = self._pump_node
        cluster.on_down = self._node_down

    # -- time ---------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the run began (the history's time)."""
        return self.world.now / SECOND

    def _http_delay(self) -> int:
        o = self.opts
        return o.http_delay_min_us + int(self.world.rng.expovariate(1.0 / o.http_delay_mean_us))

    def start(self) -> None:
        for c in range(self.opts.clients):
            self.world.after(self._think(), self._op, c, None)
        for w in range(self.opts.watchers):
            self.world.after(self._think(), self._session, w)

    def _think(self) -> int:
        return int(self.world.rng.expovariate(1.0 / self.opts.think_mean_us))

    def node_ids(self) -> list[str]:
        return [nid for nid, n in self.cluster.nodes.items() if n.state != REMOVED]

    # -- requests ---------------------------------------------------------------------

    def _op(self, client: int, retry_of: Request | None) -> None:
        if not self.active:
            return
        rng = self.world.rng
        nodes = self.node_ids()
        if retry_of is not None:
            # The same write again (a new value: a new operation), elsewhere.
            kind = retry_of.requested
            others = [n for n in nodes if n != retry_of.node]
            node = rng.choice(others) if others else retry_of.node
            key = retry_of.record["key"] or rng.choice(self.keys)
        else:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            home = nodes[client % len(nodes)]
            node = home if rng.random() < HOME_SHARE and not self._away[client] else rng.choice(nodes)
            key = rng.choice(self.keys)
        self._send(self._build(client, kind, node, key))

    def _build(self, client: int, kind: str, node: str, key: str) -> Request:
        op_id = next(self._op_ids)
        seen = self._seen[client]
        rng = self.world.rng
        record = op_record(op_id, client, node, kind, key)
        value = {"op": op_id, "c": client}
        command: dict[str, Any] | None = None
        if kind in ("put", "cas"):
            command = {"op": "put", "key": key, "value": value}
            if kind == "cas":
                command["expected_version"] = record["expected_version"] = seen.get(key, 0)
            record["kind"], record["value"] = "put", value
        elif kind in ("delete", "cas_delete"):
            command = {"op": "delete", "key": key}
            if kind == "cas_delete":
                command["expected_version"] = record["expected_version"] = seen.get(key, 1)
            record["kind"] = "delete"
        elif kind == "txn":
            keys = rng.sample(self.keys, 2) if len(self.keys) >= 2 else [key]
            ops = []
            for i, k in enumerate(keys):
                op: dict[str, Any] = {"op": "put", "key": k, "value": {"op": op_id, "c": client, "i": i}}
                if rng.random() < 0.5:
                    op["expected_version"] = seen.get(k, 0)
                ops.append(op)
            record.update(key=None, keys=keys, value=ops)
            command = {"op": "txn", "ops": ops}
        elif kind == "list":
            record.update(key=None, keys=list(self.keys))
        return Request(next(self._request_ids), client, record["kind"], kind, node, record, command)

    def _send(self, req: Request) -> None:
        req.record["invoke"] = self.now()
        self._pending[req.id] = req
        node = self.cluster.nodes.get(req.node)
        if node is None or node.state in (CRASHED, REMOVED):
            # Nothing listens: the connection is refused, nothing was sent.
            self.world.after(self._http_delay(), self._finish, req, "fail", None, None, "connect: refused")
            return
        epoch = node.epoch
        self.world.after(self._http_delay(), self._arrive, req, node, epoch)
        self.world.after(self.opts.client_timeout_us, self._timed_out, req)

    def _arrive(self, req: Request, node: WholeNode, epoch: int) -> None:
        if req.done:
            return
        if node.epoch != epoch and node.state != UP:
            self._lost(req)  # the node went down with the connection
            return

        def handle() -> None:
            if req.done:
                return
            node.http[req.id] = lambda: self._lost(req)

            def reply(status: int, doc: dict[str, Any]) -> None:
                node.http.pop(req.id, None)
                self.world.after(self._http_delay(), self._answer, req, status, doc)

            self.edge.serve(node, req, reply)

        if not self.cluster.when_up(node, handle):
            self._lost(req)

    def _answer(self, req: Request, status: int, doc: dict[str, Any]) -> None:
        if req.done:
            return
        if 200 <= status < 300:
            self._finish(req, "ok", status, doc, None)
            return
        code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
        if status == 504:
            self._finish(req, "unknown", status, doc, code)
        else:
            self._finish(req, "fail", status, doc, code)

    def _lost(self, req: Request) -> None:
        """The connection dropped after the request may have been sent: the
        outcome is unknown (no silent retry)."""
        if not req.done:
            self.world.after(self._http_delay(), self._finish, req, "unknown", None, None, "connection lost")

    def _timed_out(self, req: Request) -> None:
        if not req.done:
            self._finish(req, "unknown", None, None, "client timeout")

    def _finish(self, req: Request, outcome: str, status: int | None, doc: Any, error: str | None) -> None:
        if req.done:
            return
        req.done = True
        self._pending.pop(req.id, None)
        rec = req.record
        rec.update(
            complete=None if outcome == "unknown" else self.now(),
            outcome=outcome,
            status=status,
            error=error,
            result=doc,
        )
        self.records.append(rec)
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
        _learn_versions(self._seen[req.client], rec)
        if status == 503 and req.command is not None and self.active:
            # Nothing happened: try again soon, elsewhere.
            self.stats.retries += 1
            self.world.after(self._think() // 4, self._op, req.client, req)
        else:
            self._away[req.client] = status is None and outcome == "fail"  # refused: its node is down
            self.world.after(self._think(), self._op, req.client, None)

    def pending(self) -> int:
        return len(self._pending)

    def abandon(self) -> None:
        """The run is over: what never got an answer is unknown."""
        for req in list(self._pending.values()):
            self._finish(req, "unknown", None, None, "cancelled")

    # -- watchers -----------------------------------------------------------------------

    def _session(self, watcher: int) -> None:
        if not self.active:
            return
        rng = self.world.rng
        nid = rng.choice(self.node_ids())
        since = self._resume[watcher]
        record: dict[str, Any] = {
            "type": "watch",
            "id": next(self._session_ids),
            "watcher": watcher,
            "node": nid,
            "prefix": PREFIX,
            "since": since,
            "start": self.now(),
            "events": [],
            "error": None,
        }
        s = Session(record["id"], watcher, nid, record)
        self._sessions[s.id] = s
        node = self.cluster.nodes[nid]
        if node.state != UP:
            self._end(s, "connect: refused" if node.state != "paused" else "timeout")
            return
        s.epoch = node.epoch
        core = node.core
        assert core is not None
        s.cursor = core.open_watch(PREFIX, since)
        length = rng.randrange(self.opts.watch_session_min_us, self.opts.watch_session_max_us + 1)
        self.world.after(length, self._end, s, None)
        self._pump(s)

    def _pump_node(self, node: WholeNode) -> None:
        for s in self._sessions.values():
            if s.node == node.id and not s.closed and not s.pump_pending:
                s.pump_pending = True
                delay = self.world.rng.randrange(self.opts.watch_pump_max_us + 1)
                self.world.after(delay, self._pump_later, s)

    def _pump_later(self, s: Session) -> None:
        s.pump_pending = False
        self._pump(s)

    def _pump(self, s: Session) -> None:
        if s.closed or s.cursor is None:
            return
        node = self.cluster.nodes[s.node]
        if node.epoch != s.epoch or node.state != UP:
            return
        try:
            batch = s.cursor.take()
        except MeshError as exc:
            self._end(s, f"{exc.code}: {exc.message}")
            return
        for rec in batch:
            s.last_at = max(s.last_at, self.world.now + self._http_delay())
            event = {"revision": rec.revision, "key": rec.key, "op": rec.op, "value": rec.value}
            self.world.at(s.last_at, self._event, s, event)

    def _event(self, s: Session, event: dict[str, Any]) -> None:
        if not s.closed:
            s.record["events"].append(event)

    def _node_down(self, node: WholeNode) -> None:
        for s in list(self._sessions.values()):
            if s.node == node.id and not s.closed:
                # Events already on the wire still arrive before the close.
                self.world.at(max(s.last_at, self.world.now) + 1, self._end, s, "connection closed")

    def _end(self, s: Session, error: str | None) -> None:
        if s.closed:
            return
        s.closed = True
        self._sessions.pop(s.id, None)
        rec = s.record
        rec["end"] = self.now()
        rec["error"] = error
        self.records.append(rec)
        self.stats.watch_sessions += 1
        self.stats.watch_events += len(rec["events"])
        if rec["events"]:
            self._resume[s.watcher] = rec["events"][-1]["revision"]
        self.world.after(self._think() + (200_000 if error else 0), self._session, s.watcher)

    def close_sessions(self) -> None:
        for s in list(self._sessions.values()):
            self._end(s, None)

    # -- the end -------------------------------------------------------------------------

    def finals(self, members: list[str]) -> list[dict[str, Any]]:
        """Every member's final state, its log under the prefix and its
        digest (as the chaos run collects them), and a full watch from the
        first revision on each (which must reach the last one)."""
        out: list[dict[str, Any]] = []
        for nid in members:
            core = self.cluster.nodes[nid].core
            assert core is not None
            kv = core.kv
            records = kv.changes_since(1, PREFIX)
            out.append(
                {
                    "type": "final",
                    "node": nid,
                    "revision": kv.revision,
                    "applied_index": kv.applied_index,
                    "digest": hashlib.sha256(kv.snapshot()).hexdigest(),
                    "items": {
                        k: {"value": v.value, "version": v.version, "mod_revision": v.mod_revision}
                        for k, v in kv.range(PREFIX)
                    },
                    "records": [{"revision": r.revision, "key": r.key, "op": r.op, "value": r.value} for r in records],
                }
            )
            self.records.append(
                {
                    "type": "watch",
                    "id": f"final-{nid}",
                    "node": nid,
                    "prefix": PREFIX,
                    "since": 1,
                    "final": True,
                    "events": [
                        {"revision": r.revision, "key": r.key, "op": r.op, "value": r.value}
                        for r in core.open_watch(PREFIX, 1).take()
                    ],
                    "error": None,
                }
            )
        return out
