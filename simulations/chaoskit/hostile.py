"""Hostile neighbours for a chaos run (`--hostile`): processes on the same
machine that keep trying, at bounded rates, to get into the mesh while the
workload and the faults run.

Peer port (each node's real raft port, not through the fault proxy):
- garbage: random bytes, half of them behind a plausible frame length.
- wrong_secret: a well-formed hello and a forwarded write
  (mesh/transport/codec.py `encode_frame`) MACed with a wrong secret.
- replay: a real hello, captured on the wire by the fault proxy
  (`FaultProxy.capture_hellos`, the capture step: the proxy only copies
  bytes it forwards anyway), replayed to its addressee from a new
  connection, followed by a forwarded write the replayer cannot sign (it
  never knows the secret).
- intruder: a process that HAS the cluster secret but is not a member:
  handshakes under its own id and forwards writes (a put and a txn under
  the hostile prefix, and a `compact`, all claiming the admin role) as a
  follower would. Whether any was applied shows in the final scan.
- impersonate: a process with the secret says hello under a member's id,
  announcing a bogus API address; then asks the node's /v1/status whether
  it now shows that address for the member.

API (each node's HTTP API; the nodes run with a tokens file):
- no_token, wrong_token: a write without a token, with a wrong one.
- origin_no_token, origin_token: a write with a foreign `Origin`, without
  and with a valid operator token; origin_read: a read with a foreign
  `Origin` and a valid token; origin_ws: a watch (WebSocket upgrade) with a
  foreign `Origin` and a valid token.
- host_rebind: a write with a valid token and a `Host` that is not the
  node's (DNS rebinding).
- text_plain: a transaction posted as `text/plain` with a valid token (what
  a browser form or a preflight-free fetch sends).
- gzip_bomb: `Content-Encoding: gzip` bodies that inflate to 256 MiB, half
  with a valid token.
- oversized: a 5 MiB body with a valid token.
- deep_json: a value nested 65 to 200 deep with a valid token.
- slow_header: a request whose headers trickle in one line a second and
  never end.

Every write carries the marker: keys under HOSTILE_PREFIX (which the
workload never uses), values and authors containing MARKER. The checker
(checks.check_hostile) scans every node's final state, change history,
audit trail and member list (the `scan` records `collect_scans` writes)
and the workload's final states and watches for it: any hit means
something a hostile neighbour sent changed state. It also reports every
attempt the contract says must be refused that was not (REFUSED_WITH, a
2xx or another status), a peer connection the node answered without the
secret, a member address rewritten, and a slow-header connection held for
`slow_header_limit` seconds.

Each kind comes from its own loopback address, 127.0.0.2 for the first
kind, 127.0.0.3 for the next and so on (`HostileConfig.source` None; Linux
routes all of 127.0.0.0/8 to the loopback interface, so nothing leaves
the machine): a neighbour is a host of its own, as on a venue network, and
a node that refuses an address after repeated failures (failed logins,
bad frames) refuses that neighbour, not the workload and the mesh's own
peers, which all come from 127.0.0.1. `source` set puts every kind on that
one address (127.0.0.1: the neighbours share the harness's address, as
behind a NAT).

Each attempt is one `{"type": "hostile"}` record in history.jsonl: kind,
node, start, end, outcome ("answered" with its HTTP status and error
code, "conn_refused" (the node was down), "timeout", "dropped" (closed
without an answer), or a peer kind's own outcome, see PEER_OUTCOMES) and
a detail. Rates are attempts per second over all nodes, each kind at most
`inflight` at a time; every choice (target, bytes, ids, depths) is drawn
from generators seeded with the run's seed and the kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from mesh.transport.codec import MAC_BYTES, ForwardRequest, FrameDecoder, FrameError, encode_frame
from simulations.chaoskit.cluster import SECRET, ChaosCluster
from simulations.chaoskit.history import HistoryWriter
from simulations.chaoskit.proxy import FaultProxy
from simulations.chaoskit.workload import no_silent_retries

log = logging.getLogger(__name__)

MARKER = "hostile-neighbour-5e7f"
HOSTILE_PREFIX = "parameters/hostile/"
FOREIGN_ORIGIN = "http://evil.example"
REBIND_HOST = "rebind.evil.example"
# The API address an impersonator announces for a member.
HOSTILE_API = f"{MARKER}.invalid:9"
# The cluster name the chaos nodes run with (serve's default).
CLUSTER = "hana"

PEER_KINDS = ("garbage", "wrong_secret", "replay", "intruder", "impersonate")
API_KINDS = (
    "no_token",
    "wrong_token",
    "origin_no_token",
    "origin_token",
    "origin_read",
    "origin_ws",
    "host_rebind",
    "text_plain",
    "gzip_bomb",
    "oversized",
    "deep_json",
    "slow_header",
)
KINDS = PEER_KINDS + API_KINDS

# The answers shared/API.md ("Additions") gives each API attack: anything
# else (a 2xx above all, but also a 500 or the wrong refusal) is reported.
# slow_header is judged by how long the node holds it instead.
REFUSED_WITH: dict[str, frozenset[int]] = {
    "no_token": frozenset({401}),
    # 429 once the address failed too often (it is refused for a while).
    "wrong_token": frozenset({401, 429}),
    "origin_no_token": frozenset({401, 403}),
    "origin_token": frozenset({403}),
    "origin_read": frozenset({403}),
    "origin_ws": frozenset({403}),
    "host_rebind": frozenset({421}),
    "text_plain": frozenset({415}),
    # Refused before any work, whichever check comes first.
    "gzip_bomb": frozenset({400, 401, 413, 415}),
    "oversized": frozenset({413}),
    "deep_json": frozenset({400}),
    "slow_header": frozenset({400, 408}),
}

# Outcomes of the peer attacks (besides conn_refused, timeout, dropped):
# - answered: the node answered the hello (garbage, wrong_secret: it let in
#   a stranger; replay: expected, a replayed hello is well-formed).
# - closed: the node closed the connection, unanswered.
# - held: the node kept the connection open for `peer_wait` seconds.
# - no_capture: no hello was captured yet to replay.
# - forwarded: intruder, the node answered its hello and took its forwards.
# - refused: intruder/impersonate, the hello got no answer.
# - api_rewritten / ignored: impersonate, whether the node's status then
#   showed the bogus address for the member.
PEER_OUTCOMES = ("answered", "closed", "held", "no_capture", "forwarded", "refused", "api_rewritten", "ignored")
# Peer outcomes that mean a node let a hostile neighbour in.
PEER_BREACHES: dict[str, frozenset[str]] = {
    "garbage": frozenset({"answered"}),
    "wrong_secret": frozenset({"answered"}),
    "impersonate": frozenset({"api_rewritten"}),
}

# Attempts per second over all nodes, before HostileConfig.rate scales them.
DEFAULT_RATES: dict[str, float] = {
    "garbage": 1.0,
    "wrong_secret": 1.0,
    "replay": 0.5,
    "intruder": 0.5,
    "impersonate": 0.3,
    "no_token": 1.0,
    "wrong_token": 1.0,
    "origin_no_token": 0.5,
    "origin_token": 1.0,
    "origin_read": 0.5,
    "origin_ws": 0.5,
    "host_rebind": 0.5,
    "text_plain": 1.0,
    "gzip_bomb": 0.3,
    "oversized": 0.3,
    "deep_json": 1.0,
    "slow_header": 0.3,
}


@dataclass
class HostileConfig:
    # Scales every kind's rate (DEFAULT_RATES unless `rates` says otherwise).
    rate: float = 1.0
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    kinds: tuple[str, ...] = KINDS
    # Attempts of one kind in progress at once, at most.
    inflight: int = 6
    request_timeout: float = 5.0
    # How long a peer attacker waits for the node to answer or close.
    peer_wait: float = 6.0
    # A slow-header connection the node still holds after this many
    # seconds is an anomaly (finding 15: held for 100 s and more).
    slow_header_limit: float = 15.0
    gzip_bomb_bytes: int = 256 << 20
    oversized_bytes: int = 5 << 20
    deep_depth: tuple[int, int] = (65, 200)
    # The loopback address every kind connects from; None: one address per
    # kind (source_of), none of them the harness's 127.0.0.1.
    source: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown hostile kind(s): {', '.join(sorted(unknown))}")
        if self.rate <= 0 or any(r < 0 for r in self.rates.values()):
            raise ValueError("hostile rates must be positive")
        if self.source is not None:
            try:
                loopback = ipaddress.IPv4Address(self.source).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ValueError(f"hostile source {self.source!r} is not an IPv4 loopback address (127.x.y.z)")

    def source_of(self, kind: str) -> str:
        """The address `kind` connects from."""
        return self.source or f"127.0.0.{2 + KINDS.index(kind)}"

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["kinds"] = list(self.kinds)
        doc["deep_depth"] = list(self.deep_depth)
        return doc


def marked_value(kind: str, n: int, **extra: Any) -> dict[str, Any]:
    return {"hostile": MARKER, "kind": kind, "n": n, **extra}


def nested(depth: int, leaf: Any) -> Any:
    """`leaf` inside `depth` levels of lists and objects, alternating."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"h": value}
    return value


def gzip_bomb(total: int) -> bytes:
    """A gzip body that inflates to a JSON write of about `total` bytes
    (a marked value, then spaces): about a thousandth of that on the wire."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(orjson.dumps({"value": marked_value("gzip_bomb", 0)})[:-1])]
    chunk = b" " * (1 << 20)
    for _ in range(max(total >> 20, 1)):
        parts.append(z.compress(chunk))
    parts.append(z.compress(b"}"))
    parts.append(z.flush())
    return b"".join(parts)


def oversized_body(total: int) -> bytes:
    return orjson.dumps({"value": marked_value("oversized", 0, pad="x" * total)})


@dataclass
class HostileStats:
    attempts: Counter[str] = field(default_factory=Counter)


class Hostile:
    """Runs every configured attack until `stop`, writing one record per attempt."""

    def __init__(
        self,
        seed: int,
        cluster: ChaosCluster,
        proxy: FaultProxy,
        writer: HistoryWriter,
        clock: Callable[[], float],
        cfg: HostileConfig,
    ) -> None:
        self.seed = seed
        self.cluster = cluster
        self.proxy = proxy
        self.writer = writer
        self.clock = clock
        self.cfg = cfg
        self.stats = HostileStats()
        self._bomb = b""
        self._oversized = b""

    async def run(self, stop: asyncio.Event) -> None:
        kinds = [k for k in self.cfg.kinds if self._rate(k) > 0]
        if "gzip_bomb" in kinds:
            self._bomb = await asyncio.to_thread(gzip_bomb, self.cfg.gzip_bomb_bytes)
        if "oversized" in kinds:
            self._oversized = oversized_body(self.cfg.oversized_bytes)
        async with asyncio.TaskGroup() as group:
            for kind in kinds:
                group.create_task(self._attack(kind, stop))

    def _rate(self, kind: str) -> float:
        return self.cfg.rates.get(kind, 0.0) * self.cfg.rate

    async def _attack(self, kind: str, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout, connect=1.0)
        # From the kind's own address; a fresh connection per request: a
        # refusal may close it, and one attempt must not ride on what
        # another left behind.
        connector = aiohttp.TCPConnector(limit=0, force_close=True, local_addr=(self.cfg.source_of(kind), 0))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            no_silent_retries(session)
            await self._attempts(kind, session, stop)

    async def _attempts(self, kind: str, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        rng = random.Random(f"{self.seed}:hostile:{kind}")
        rate = self._rate(kind)
        slots = asyncio.Semaphore(self.cfg.inflight)
        running: set[asyncio.Task[None]] = set()
        n = 0
        try:
            while not stop.is_set():
                if await _pause(stop, rng.uniform(0.5, 1.5) / rate):
                    break
                await slots.acquire()
                n += 1
                node = rng.choice(self.cluster.ids)
                task = asyncio.create_task(
                    self._attempt(kind, n, node, random.Random(rng.getrandbits(64)), session, stop)
                )
                running.add(task)

                def done(t: asyncio.Task[None]) -> None:
                    running.discard(t)
                    slots.release()

                task.add_done_callback(done)
        finally:
            # Attempts end within their timeouts (a slow-header one when it
            # sees `stop`); whatever is left after that is cancelled.
            if running:
                _, late = await asyncio.wait(set(running), timeout=self.cfg.peer_wait + 2.0)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)

    async def _attempt(
        self,
        kind: str,
        n: int,
        node: str,
        rng: random.Random,
        session: aiohttp.ClientSession,
        stop: asyncio.Event,
    ) -> None:
        record: dict[str, Any] = {"type": "hostile", "kind": kind, "n": n, "node": node, "start": self.clock()}
        self.stats.attempts[kind] += 1
        try:
            if kind in PEER_KINDS:
                result = await self._peer(kind, n, node, rng)
            elif kind == "slow_header":
                result = await self._slow_header(node, stop)
            elif kind == "origin_ws":
                result = await self._origin_ws(node, session)
            else:
                result = await self._api(kind, n, node, rng, session)
        except Exception as exc:
            # A bug of the harness, not of the mesh: reported as an anomaly.
            log.exception("event=hostile_harness_error kind=%s node=%s", kind, node)
            result = {"outcome": "harness_error", "detail": repr(exc)[:300]}
        record.update({"status": None, "code": None, "detail": ""}, **result)
        record["end"] = self.clock()
        self.writer.write(record)

    # -- API -----------------------------------------------------------------------

    async def _api(
        self, kind: str, n: int, node: str, rng: random.Random, session: aiohttp.ClientSession
    ) -> dict[str, Any]:
        api = self.cluster.nodes[node].api
        key = f"{HOSTILE_PREFIX}{kind}/{n}"
        url = f"http://{api}/v1/kv/{key}"
        body: bytes | None = orjson.dumps({"value": marked_value(kind, n)})
        params: dict[str, str] | None = None
        method = "PUT"
        json_type = {"Content-Type": "application/json"}
        token = self.cluster.header("operator")
        headers: dict[str, str]
        if kind == "no_token":
            headers = json_type
        elif kind == "wrong_token":
            headers = {**json_type, "Authorization": f"Bearer hostile-{rng.randbytes(16).hex()}"}
        elif kind == "origin_no_token":
            headers = {**json_type, "Origin": FOREIGN_ORIGIN}
        elif kind == "origin_token":
            headers = {**json_type, **token, "Origin": FOREIGN_ORIGIN}
        elif kind == "origin_read":
            method, url, body, params = "GET", f"http://{api}/v1/kv", None, {"prefix": "parameters/"}
            headers = {**token, "Origin": FOREIGN_ORIGIN}
        elif kind == "host_rebind":
            headers = {**json_type, **token, "Host": f"{REBIND_HOST}:{self.cluster.nodes[node].api_port}"}
        elif kind == "text_plain":
            method, url = "POST", f"http://{api}/v1/txn"
            body = orjson.dumps({"ops": [{"op": "put", "key": key, "value": marked_value(kind, n)}]})
            headers = {"Content-Type": "text/plain", **token}
        elif kind == "gzip_bomb":
            body = self._bomb
            headers = {**json_type, "Content-Encoding": "gzip", **(token if n % 2 == 0 else {})}
        elif kind == "oversized":
            body = self._oversized
            headers = {**json_type, **token}
        elif kind == "deep_json":
            depth = rng.randint(*self.cfg.deep_depth)
            body = orjson.dumps({"value": nested(depth, marked_value(kind, n, depth=depth))})
            headers = {**json_type, **token}
        else:
            raise ValueError(f"not an API attack: {kind}")
        try:
            async with session.request(method, url, data=body, params=params, headers=headers) as resp:
                raw = await resp.content.read(4096)
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            return {"outcome": "conn_refused", "detail": str(exc.os_error)[:200]}
        except TimeoutError:
            return {"outcome": "timeout"}
        except aiohttp.ClientError as exc:
            return {"outcome": "dropped", "detail": f"{type(exc).__name__}: {exc}"[:200]}
        code, shaped = _error_code(raw)
        return {"outcome": "answered", "status": status, "code": code, "json_error": shaped, "detail": _text(raw)}

    async def _origin_ws(self, node: str, session: aiohttp.ClientSession) -> dict[str, Any]:
        api = self.cluster.nodes[node].api
        headers = {**self.cluster.header("operator"), "Origin": FOREIGN_ORIGIN}
        try:
            async with session.ws_connect(
                f"http://{api}/v1/watch", params={"prefix": "parameters/", "since": "1"}, headers=headers
            ) as ws:
                # Upgraded: the foreign page can now read every change.
                first = await ws.receive(timeout=1.0)
                got = first.data if first.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY) else None
                return {"outcome": "answered", "status": 101, "detail": _text(got or b"")}
        except aiohttp.WSServerHandshakeError as exc:
            return {"outcome": "answered", "status": exc.status, "code": None, "detail": str(exc.message)[:200]}
        except aiohttp.ClientConnectorError as exc:
            return {"outcome": "conn_refused", "detail": str(exc.os_error)[:200]}
        except TimeoutError:
            return {"outcome": "timeout"}
        except aiohttp.ClientError as exc:
            return {"outcome": "dropped", "detail": f"{type(exc).__name__}: {exc}"[:200]}

    async def _slow_header(self, node: str, stop: asyncio.Event) -> dict[str, Any]:
        """Headers one line a second, never finished: the node must close
        the connection (or answer 408/400) within slow_header_limit."""
        target = self.cluster.nodes[node]
        opened = await self._open(target.api_port, "slow_header")
        if isinstance(opened, dict):
            return opened
        reader, writer = opened
        started = time.monotonic()
        writer.write(f"GET /v1/status HTTP/1.1\r\nHost: {target.api}\r\n".encode())
        line = 0
        try:
            while (held := time.monotonic() - started) < self.cfg.slow_header_limit:
                if stop.is_set():
                    return {"outcome": "stopped", "detail": f"held {held:.1f} s when the run stopped"}
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                except TimeoutError:
                    line += 1
                    writer.write(f"X-Slow-{line}: {MARKER}\r\n".encode())
                    await writer.drain()
                    continue
                if not data:
                    return {"outcome": "closed", "detail": f"closed by the node after {held:.1f} s"}
                status = _http_status(data)
                return {"outcome": "answered", "status": status, "detail": f"after {held:.1f} s: {_text(data)}"}
            return {"outcome": "held", "detail": f"still open after {self.cfg.slow_header_limit:.0f} s"}
        except (ConnectionError, OSError) as exc:
            return {"outcome": "closed", "detail": f"{type(exc).__name__} after {time.monotonic() - started:.1f} s"}
        finally:
            writer.transport.abort()

    # -- peer port --------------------------------------------------------------------

    async def _open(self, port: int, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | dict[str, Any]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(self.cfg.source_of(kind), 0)), 3.0
            )
        except (ConnectionRefusedError, ConnectionResetError) as exc:
            return {"outcome": "conn_refused", "detail": str(exc)[:200]}
        except TimeoutError:
            return {"outcome": "timeout", "detail": "connect"}

    async def _peer(self, kind: str, n: int, node: str, rng: random.Random) -> dict[str, Any]:
        src, hello = "", b""
        if kind == "replay":
            # What the proxy copied off the wire (the capture step): the
            # replayer has these bytes and nothing else.
            captured = sorted(k for k in self.proxy.hellos if k[1] == node)
            if not captured:
                return {"outcome": "no_capture"}
            src = rng.choice(captured)[0]
            hello = self.proxy.hellos[(src, node)]
        opened = await self._open(self.cluster.nodes[node].raft_port, kind)
        if isinstance(opened, dict):
            return opened
        reader, writer = opened
        try:
            if kind == "garbage":
                writer.write(_garbage(rng))
                return await self._answered_or_closed(reader, writer)
            if kind == "wrong_secret":
                secret = rng.randbytes(32)
                claimed = rng.choice([*self.cluster.ids, f"stranger-{n}"])
                writer.write(_hello(secret, claimed, node, rng.randbytes(16)))
                writer.write(self._forward(secret, claimed, node, n, 1, b""))
                return await self._answered_or_closed(reader, writer)
            if kind == "replay":
                return await self._replay(reader, writer, hello, src, n, node, rng)
            if kind == "intruder":
                return await self._intruder(reader, writer, n, node, rng)
            return await self._impersonate(reader, writer, node, rng)
        except (ConnectionError, OSError) as exc:
            return {"outcome": "closed", "detail": f"{type(exc).__name__}: {exc}"[:200]}
        finally:
            writer.transport.abort()

    def _forward(self, secret: bytes, frm: str, to: str, n: int, seq: int, context: bytes) -> bytes:
        """A frame carrying a forwarded marked write."""
        command = {
            "op": "put",
            "key": f"{HOSTILE_PREFIX}forward/{frm}/{n}",
            "value": marked_value("forward", n),
            "author": MARKER,
        }
        request = ForwardRequest(to, frm, n, orjson.dumps(command))
        return encode_frame(secret, CLUSTER, frm, seq, orjson.dumps(request.to_dict()), context)

    async def _answered_or_closed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
        """Wait for the node's answer or its close, up to peer_wait."""
        started = time.monotonic()
        got = b""
        try:
            await writer.drain()
            async with asyncio.timeout(self.cfg.peer_wait):
                while data := await reader.read(4096):
                    got += data
        except TimeoutError:
            if got:
                return {"outcome": "answered", "detail": f"{len(got)} bytes back, connection held"}
            return {"outcome": "held", "detail": f"open after {self.cfg.peer_wait:.0f} s"}
        except (ConnectionError, OSError) as exc:
            if not got:
                return {"outcome": "closed", "detail": f"{type(exc).__name__} after {time.monotonic() - started:.2f} s"}
        if got:
            return {"outcome": "answered", "detail": f"{len(got)} bytes back"}
        return {"outcome": "closed", "detail": f"after {time.monotonic() - started:.2f} s"}

    async def _replay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: bytes,
        src: str,
        n: int,
        node: str,
        rng: random.Random,
    ) -> dict[str, Any]:
        """The captured hello; once answered (a replayed hello is well
        formed), a forwarded write the replayer cannot sign."""
        writer.write(hello)
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(4096), self.cfg.peer_wait)
        except TimeoutError:
            return {"outcome": "held", "detail": f"hello of {src}->{node} not answered in {self.cfg.peer_wait:.0f} s"}
        if not answer:
            return {"outcome": "closed", "detail": f"hello of {src}->{node} refused"}
        writer.write(self._forward(rng.randbytes(32), src, node, n, 1, b""))
        after = await self._answered_or_closed(reader, writer)
        what = {"closed": "closed on the unsigned forward", "held": "connection kept after the unsigned forward"}
        detail = what.get(after["outcome"], f"then {after['outcome']} {after.get('detail', '')}")
        return {"outcome": "answered", "detail": f"hello of {src}->{node} answered; {detail}"}

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ident: str, node: str, nonce: bytes, api: str
    ) -> bytes | None:
        """Hello with the real secret, as a member would (mesh/transport/tcp.py);
        the connection's MAC context, or None if the node did not answer."""
        writer.write(_hello(SECRET.encode(), ident, node, nonce, api))
        await writer.drain()
        decoder = FrameDecoder(SECRET.encode(), CLUSTER, context=nonce, max_frame=4096)
        try:
            async with asyncio.timeout(self.cfg.peer_wait):
                while (frame := decoder.next_frame()) is None:
                    data = await reader.read(4096)
                    if not data:
                        return None
                    decoder.feed(data)
            their = bytes.fromhex(orjson.loads(frame.payload)["hello"]["nonce"])
        except (TimeoutError, FrameError, ConnectionError, OSError, KeyError, TypeError, ValueError):
            return None
        return nonce + their

    async def _intruder(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, node: str, rng: random.Random
    ) -> dict[str, Any]:
        ident = f"intruder-{n}"
        context = await self._handshake(reader, writer, ident, node, rng.randbytes(16), "")
        if context is None:
            return {"outcome": "refused", "detail": "hello not answered"}
        base = {"author": MARKER, "role": "admin", "node": ident, "time": time.time_ns() // 1_000_000}
        commands = [
            {"op": "put", "key": f"{HOSTILE_PREFIX}intruder/{n}", "value": marked_value("intruder", n), **base},
            {
                "op": "txn",
                "ops": [{"op": "put", "key": f"{HOSTILE_PREFIX}intruder/{n}-txn", "value": marked_value("txn", n)}],
                **base,
            },
            # Revision 1 drops no history, so a compact that gets through is
            # seen by its audit record (author: the marker) and does not
            # blind the other checks.
            {"op": "compact", "revision": 1, **base},
        ]
        secret = SECRET.encode()
        for seq, command in enumerate(commands, 1):
            request = ForwardRequest(node, ident, seq, orjson.dumps(command))
            writer.write(encode_frame(secret, CLUSTER, ident, seq, orjson.dumps(request.to_dict()), context))
        result = await self._answered_or_closed(reader, writer)
        after = {"closed": "closed after the forwards", "held": "connection kept"}.get(result["outcome"], "")
        return {"outcome": "forwarded", "detail": f"{len(commands)} forwards sent; {after or result.get('detail')}"}

    async def _impersonate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node: str, rng: random.Random
    ) -> dict[str, Any]:
        claimed = rng.choice([m for m in self.cluster.ids if m != node])
        context = await self._handshake(reader, writer, claimed, node, rng.randbytes(16), HOSTILE_API)
        writer.transport.abort()
        members = await self._members(node)
        if members is None:
            return {"outcome": "refused" if context is None else "answered", "detail": "status unavailable"}
        shown = {m.get("id"): m.get("api") for m in members}
        if any(isinstance(api, str) and MARKER in api for api in shown.values()):
            return {"outcome": "api_rewritten", "detail": f"as {claimed}: status shows {shown}"[:300]}
        hello = "hello answered" if context is not None else "hello not answered"
        return {"outcome": "ignored", "detail": f"as {claimed}: {hello}"}

    async def _members(self, node: str) -> list[dict[str, Any]] | None:
        doc = await self.cluster.status(node)
        members = doc.get("members") if doc is not None else None
        return members if isinstance(members, list) else None


def _hello(secret: bytes, ident: str, to: str, nonce: bytes, api: str = "") -> bytes:
    payload = {"hello": {"id": ident, "to": to, "nonce": nonce.hex(), "api": api}}
    return encode_frame(secret, CLUSTER, ident, 0, orjson.dumps(payload))


def _garbage(rng: random.Random) -> bytes:
    """Random bytes; half the time behind a length prefix a hello could
    have, with a body and a MAC of random bytes."""
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(1, 4096))
    body = rng.randint(8, 4000)
    return body.to_bytes(4, "big") + rng.randbytes(body + MAC_BYTES)


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` (pacing, not synchronisation); True if stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _text(raw: bytes | str) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return text[:200]


def _error_code(raw: bytes) -> tuple[str | None, bool]:
    """The error code of a JSON error answer, and whether it has the
    contract's shape ({"error": {"code", "message"}})."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, False
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str):
        return err["code"], True
    return None, False


_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})")


def _http_status(data: bytes) -> int | None:
    match = _STATUS_LINE.match(data)
    return int(match.group(1)) if match else None


# -- the final scan -------------------------------------------------------------------


async def collect_scans(cluster: ChaosCluster, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every node's whole state, change history, audit trail, member list and
    dropped-frame counters, for check_hostile to search for the marker."""
    headers = cluster.header("admin")
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), headers=headers) as session:
        for nid, node in cluster.nodes.items():
            base = f"http://{node.api}"
            record: dict[str, Any] = {"type": "scan", "node": nid, "error": None}
            try:
                local = {"consistency": "local"}
                items = await _get_json(session, f"{base}/v1/kv", {"prefix": "", **local})
                history = await _get_held(session, f"{base}/v1/history", {"prefix": "", **local})
                audit = await _get_held(session, f"{base}/v1/audit", local)
                status = await _get_json(session, f"{base}/v1/status")
                async with session.get(f"{base}/metrics") as resp:
                    metrics = (await resp.read()).decode(errors="replace") if resp.status == 200 else ""
            except (aiohttp.ClientError, TimeoutError, RuntimeError, orjson.JSONDecodeError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"[:300]
                out.append(record)
                continue
            record.update(
                items=items.get("items", []),
                records=history.get("records", []),
                audit=audit.get("entries", []),
                members=status.get("members", []),
                dropped_frames=_dropped_frames(metrics),
            )
            out.append(record)
    return out


async def _get_json(session: aiohttp.ClientSession, url: str, params: dict[str, str] | None = None) -> Any:
    async with session.get(url, params=params) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {raw[:200]!r}")
        return orjson.loads(raw)


async def _get_held(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> Any:
    """Everything a history-like route still holds: asked from the start,
    then (410 compacted) from the oldest revision it names."""
    async with session.get(url, params=params) as resp:
        raw = await resp.read()
        if resp.status == 410:
            oldest = orjson.loads(raw).get("error", {}).get("oldest")
            if type(oldest) is int:
                return await _get_json(session, url, {**params, "since": str(oldest)})
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {raw[:200]!r}")
        return orjson.loads(raw)


_DROPPED = re.compile(r'^hana_peer_frames_dropped\{reason="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)


def _dropped_frames(metrics: str) -> dict[str, int]:
    return {reason: int(float(n)) for reason, n in _DROPPED.findall(metrics)}
