"""The client workload of a chaos run: concurrent clients doing puts,
conditional puts, deletes, transactions, linearizable and local reads and
prefix reads against random nodes through the HTTP API, and watchers
that follow every change over WebSockets, resuming on another node.

Each operation's outcome is classified the way a careful client must:
- "ok": a 2xx answer.
- "fail": a definite refusal that changed nothing: the connection was
  refused (nothing was sent), or 404/409/503 (API.md: 503 means no
  controller took the write).
- "unknown": no answer to trust: a timeout, a dropped connection after
  the request may have been sent, or 504. The write may have happened.
Any other status (400, 5xx but 503/504) is a client or server bug and is
recorded as "fail" with the status, and reported by the checker.

Every written value is unique (`{"op": <op id>, "c": <client>}`) so that the
checker can tell which operation a value in any node's log came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl as ssl_lib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from simulations.chaoskit.history import HistoryWriter

KEY_PREFIX = "parameters/chaos/"
DEFINITE_FAILURES = frozenset({404, 409, 503})
KINDS = ("put", "cas", "delete", "cas_delete", "txn", "read", "read_local", "list")
WEIGHTS = (26, 14, 6, 4, 8, 28, 6, 8)
HOME_SHARE = 0.8


def op_record(op_id: int, client: int, node: str, kind: str, key: str | None, **fields: Any) -> dict[str, Any]:
    """A history's op record as it starts (the checker's format: checks.py);
    `fields` adds or overrides (value, offline, invoke, …)."""
    record: dict[str, Any] = {
        "type": "op",
        "id": op_id,
        "client": client,
        "node": node,
        "kind": kind,
        "key": key,
        "keys": None,
        "value": None,
        "expected_version": None,
    }
    record.update(fields)
    return record


@dataclass
class WorkloadStats:
    outcomes: Counter[str] = field(default_factory=Counter)
    watch_events: int = 0
    watch_sessions: int = 0


@dataclass
class Answer:
    outcome: str
    status: int | None = None
    doc: Any = None
    error: str | None = None


class Workload:
    def __init__(
        self,
        seed: int,
        apis: dict[str, str],
        writer: HistoryWriter,
        clock: Callable[[], float],
        clients: int,
        watchers: int,
        keys: int = 6,
        think: float = 0.02,
        request_timeout: float = 7.0,
        headers: dict[str, str] | None = None,
        scheme: str = "http",
        ssl: ssl_lib.SSLContext | None = None,
    ) -> None:
        self.seed = seed
        # https and the context verifying the nodes with --tls (cluster.py).
        self.scheme = scheme
        self.ssl = ssl
        self.apis = apis
        self.writer = writer
        self.clock = clock
        self.clients = clients
        self.watchers = watchers
        self.keys = [f"{KEY_PREFIX}k{i}" for i in range(keys)]
        self.think = think
        self.request_timeout = request_timeout
        # Sent with every request and watch: the operator token of the
        # nodes' tokens file (cluster.py).
        self.headers = dict(headers or {})
        self.stats = WorkloadStats()
        self._op_ids = itertools.count(1)
        self._watch_ids = itertools.count(1)

    @property
    def op_ids(self) -> itertools.count[int]:
        """The run's operation ids (shared with the offline writers)."""
        return self._op_ids

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, connect=1.0)
        connector = aiohttp.TCPConnector(limit=0, ssl=self.ssl if self.ssl is not None else True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, headers=self.headers) as session:
            no_silent_retries(session)
            # A TaskGroup: a client that fails (a bug in the harness) stops
            # the others and the run, instead of leaving them on a closed session.
            async with asyncio.TaskGroup() as group:
                for c in range(self.clients):
                    group.create_task(self._client(session, c, stop))
                for w in range(self.watchers):
                    group.create_task(self._watcher(session, w, stop))

    # -- clients -------------------------------------------------------------------

    async def _client(self, session: aiohttp.ClientSession, client: int, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed * 1_000 + client)
        # The version this client last saw per key: what a real client
        # would put in a conditional write.
        seen: dict[str, int] = {}
        nodes = list(self.apis)
        # Mostly a home node, as a real client (a display's own node, the
        # management app) has: a node that hangs then stalls only its own
        # clients, and windows without any successful write measure the
        # mesh, not clients all stuck on one paused node.
        home = nodes[client % len(nodes)]
        while not stop.is_set():
            kind = rng.choices(KINDS, WEIGHTS)[0]
            node = home if rng.random() < HOME_SHARE else rng.choice(nodes)
            await self._one(session, client, rng, seen, kind, node)
            if self.think:
                await _pause(stop, rng.uniform(0, self.think))

    async def _one(
        self,
        session: aiohttp.ClientSession,
        client: int,
        rng: random.Random,
        seen: dict[str, int],
        kind: str,
        node: str,
    ) -> None:
        op_id = next(self._op_ids)
        base = f"{self.scheme}://{self.apis[node]}"
        key = rng.choice(self.keys)
        record = op_record(op_id, client, node, kind, key)
        value = {"op": op_id, "c": client}
        if kind in ("put", "cas"):
            body: dict[str, Any] = {"value": value}
            if kind == "cas":
                body["expected_version"] = seen.get(key, 0)
                record["expected_version"] = body["expected_version"]
            record["kind"], record["value"] = "put", value
            request = ("PUT", f"{base}/v1/kv/{quote(key, safe='/')}", body, None)
        elif kind in ("delete", "cas_delete"):
            params = None
            if kind == "cas_delete":
                params = {"expected_version": str(seen.get(key, 1))}
                record["expected_version"] = seen.get(key, 1)
            record["kind"] = "delete"
            request = ("DELETE", f"{base}/v1/kv/{quote(key, safe='/')}", None, params)
        elif kind == "txn":
            keys = rng.sample(self.keys, 2)
            ops = []
            for i, k in enumerate(keys):
                op: dict[str, Any] = {"op": "put", "key": k, "value": {"op": op_id, "c": client, "i": i}}
                if rng.random() < 0.5:
                    op["expected_version"] = seen.get(k, 0)
                ops.append(op)
            record.update(key=None, keys=keys, value=ops)
            request = ("POST", f"{base}/v1/txn", {"ops": ops}, None)
        elif kind in ("read", "read_local"):
            consistency = "linearizable" if kind == "read" else "local"
            request = ("GET", f"{base}/v1/kv/{quote(key, safe='/')}", None, {"consistency": consistency})
        else:  # list
            record.update(key=None, keys=list(self.keys))
            request = ("GET", f"{base}/v1/kv", None, {"prefix": KEY_PREFIX, "consistency": "linearizable"})
        record["invoke"] = self.clock()
        answer = Answer("unknown", error="cancelled")
        try:
            answer = await _call(session, *request)
        finally:
            record["complete"] = None if answer.outcome == "unknown" else self.clock()
            record.update(outcome=answer.outcome, status=answer.status, error=answer.error, result=answer.doc)
            self.writer.write(record)
            self.stats.outcomes[answer.outcome] += 1
        _learn_versions(seen, record)

    # -- watchers ------------------------------------------------------------------

    async def _watcher(self, session: aiohttp.ClientSession, wid: int, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed * 1_000 + 500 + wid)
        since = 1
        while not stop.is_set():
            node = rng.choice(list(self.apis))
            length = rng.uniform(2.0, 8.0)
            record: dict[str, Any] = {
                "type": "watch",
                "id": next(self._watch_ids),
                "watcher": wid,
                "node": node,
                "prefix": KEY_PREFIX,
                "since": since,
                "start": self.clock(),
                "events": [],
                "error": None,
            }
            events: list[dict[str, Any]] = record["events"]
            url = f"{self.scheme}://{self.apis[node]}/v1/watch"
            try:
                async with asyncio.timeout(length + 3.0):
                    await self._watch_session(session, url, since, length, events, stop)
            except TimeoutError:
                record["error"] = "timeout"
            except aiohttp.ClientError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            except _WatchRefused as exc:
                record["error"] = str(exc)
            record["end"] = self.clock()
            self.writer.write(record)
            self.stats.watch_sessions += 1
            self.stats.watch_events += len(events)
            if events:
                # Resume at the last revision seen, not after it: a
                # transaction's records share one revision, and the session
                # may have ended between them. The checker compares each
                # session on its own.
                since = events[-1]["revision"]
            if record["error"]:
                await _pause(stop, 0.2)  # back off a little before the next node

    async def _watch_session(
        self,
        session: aiohttp.ClientSession,
        url: str,
        since: int,
        length: float,
        events: list[dict[str, Any]],
        stop: asyncio.Event,
    ) -> None:
        deadline = time.monotonic() + length
        async with session.ws_connect(url, params={"prefix": KEY_PREFIX, "since": str(since)}) as ws:
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    msg = await ws.receive(timeout=left)
                except TimeoutError:
                    return  # the session's length is up
                if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    doc = orjson.loads(msg.data)
                    if "error" in doc:
                        raise _WatchRefused(f"{doc['error'].get('code')}: {doc['error'].get('message')}")
                    if doc.get("type", "change") == "change":  # not status, outbox, conflict notices
                        events.append({k: doc.get(k) for k in ("revision", "key", "op", "value")})
                else:
                    return  # closed by the node (shutdown, crash)


def no_silent_retries(session: aiohttp.ClientSession) -> None:
    """Turn off aiohttp's retry of PUT and DELETE (idempotent in HTTP) when a
    connection drops: the first attempt may have been applied, and a refused
    retry would make that write look definitely refused (found by a chaos
    run: a "refused" write in the log). aiohttp's own test client does the
    same; the attribute is private, so its absence is an error."""
    if not hasattr(session, "_retry_connection"):
        raise RuntimeError("aiohttp no longer has ClientSession._retry_connection: check its retry behaviour")
    session._retry_connection = False


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if the run is stopping (pacing, not sync)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class _WatchRefused(Exception):
    """The node ended the watch with an error message."""


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any, params: dict[str, str] | None
) -> Answer:
    data = orjson.dumps(body) if body is not None else None
    try:
        async with session.request(
            method, url, data=data, params=params, headers={"Content-Type": "application/json"}
        ) as resp:
            raw = await resp.read()
            status = resp.status
    except aiohttp.ClientConnectorError as exc:
        # Nothing was sent: the node is down (connection refused).
        return Answer("fail", error=f"connect: {exc.os_error}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Answer("unknown", error=f"{type(exc).__name__}: {exc}")
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        # Whatever the node did, we cannot tell: unknown (and a bug the
        # checker reports, as every answer must be JSON).
        return Answer("unknown", status, error=f"answer is not JSON: {raw[:200]!r}")
    if 200 <= status < 300:
        return Answer("ok", status, doc)
    code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
    if status == 504:
        return Answer("unknown", status, doc, code)
    return Answer("fail", status, doc, code)


def _learn_versions(seen: dict[str, int], record: dict[str, Any]) -> None:
    """What a client learns about versions from an answer."""
    doc = record.get("result")
    if record["outcome"] == "ok" and isinstance(doc, dict):
        kind = record["kind"]
        if kind in ("put", "read", "read_local") and "version" in doc:
            seen[record["key"]] = doc["version"]
        elif kind == "delete":
            seen[record["key"]] = 0
        elif kind == "txn":
            for r in doc.get("results", []):
                if "version" in r:
                    seen[r["key"]] = r["version"]
        elif kind == "list":
            present = {i["key"]: i["version"] for i in doc.get("items", [])}
            for k in record["keys"]:
                seen[k] = present.get(k, 0)
    elif record["outcome"] == "fail" and record.get("status") == 404 and record["key"]:
        seen[record["key"]] = 0
    elif record["outcome"] == "fail" and record.get("status") == 409 and isinstance(doc, dict):
        err = doc.get("error", {})
        current = err.get("current")
        key = record["key"]
        if record["kind"] == "txn" and isinstance(err.get("op_index"), int) and err["op_index"] < len(record["keys"]):
            key = record["keys"][err["op_index"]]
        if key and "current" in err:
            seen[key] = current["version"] if isinstance(current, dict) else 0
