"""The fault schedule of a chaos run, drawn from the run's seed.

One fault at a time: a quiet gap, then a fault held for a while, then
healed (killed nodes restarted, paused nodes resumed, links restored,
removed members added back). The first faults go through every kind once,
in an order drawn from the seed, so even a short run injects each kind;
after that kinds are drawn at random. Kinds:

- kill: SIGKILL a node (half the time the controller), restart it later.
- torn_tail: SIGKILL a node, leave a torn write at its WAL tail, restart.
- pause: SIGSTOP a node (half the time the controller), SIGCONT later.
- partition: a random minority cut off from the majority, both directions.
- isolate_leader: the controller cut off from everyone.
- bridge: two halves that cannot talk, and one node that talks to both.
- asymmetric: one node's traffic cut in one direction only (it hears the
  others but is not heard, or the reverse).
- latency: 30-200 ms (with jitter) between a chosen pair of nodes, on every
  link of one node, or on all links.
- loss: 10-40 % loss (see proxy.py: stalls and resets), scoped the same way.
- membership: a voter removed through POST /v1/members, added back as a
  learner and promoted when the fault heals.
- rotate_ca (a TLS run only, never drawn unless asked for): `POST
  /v1/trust/rotate-ca` on the signer (the node holding tls/ca.key), then,
  when the fault heals, wait (bounded) until the roll has ended: GET
  /v1/trust says phase "done", every node's ca.pem holds the new CA
  alone, its certificate issued by it, and its HTTPS API passes a client
  that trusts the new CA alone. The fault record carries `roll`
  (done, seconds from the request to the end, the new CA's fingerprint).

The process's own timing (when a fault actually lands relative to client
operations) is not replayable; the schedule (kinds, targets, durations,
gaps) is, from the seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from mesh.transport.tls import client_context
from mesh.trust import ca, local
from simulations.chaoskit.cluster import SIGNER, ChaosCluster
from simulations.chaoskit.history import HistoryWriter
from simulations.chaoskit.proxy import FaultProxy
from simulations.chaoskit.schedule import CONTROLLER, DIRECTIONS, TEARS, ScheduledFault

log = logging.getLogger(__name__)

FAULT_KINDS = (
    "kill",
    "torn_tail",
    "pause",
    "partition",
    "isolate_leader",
    "bridge",
    "asymmetric",
    "latency",
    "loss",
    "membership",
)
# Kinds of a TLS run (--tls), not in the default set (schedule.TLS_OPTIONS).
TLS_FAULT_KINDS = ("rotate_ca",)
ALL_FAULT_KINDS = FAULT_KINDS + TLS_FAULT_KINDS
# How long a rotate_ca fault waits for the roll to end, by default (seconds).
ROLL_TIMEOUT = 40.0


# The end of a fault's detail when it could not be applied (a membership
# change refused while there is no controller): it does not count as done.
NOT_APPLIED = "(not applied)"


@dataclass
class Injected:
    """A fault in place: its targets, what it is, how to undo it, and the
    schedule entry (schedule.py) that would inject it again."""

    targets: list[str]
    detail: str
    heal: Callable[[], Awaitable[None]]
    resolved: dict[str, Any]
    # Fields the heal found out, added to the fault record (rotate_ca: roll).
    outcome: dict[str, Any] = field(default_factory=dict)


def _named(spec: ScheduledFault | None) -> tuple[str, ...] | None:
    """The nodes a schedule entry names; None when they are to be drawn."""
    return None if spec is None else spec.nodes


def _scope_nodes(targets: list[str], nodes: list[str]) -> list[str]:
    """A link-scoped fault's `nodes` in a schedule: [] means every link."""
    return [] if sorted(targets) == sorted(nodes) else targets


@dataclass
class FaultTiming:
    gap: tuple[float, float] = (1.0, 3.0)
    hold: tuple[float, float] = (2.0, 6.0)


class FaultInjector:
    def __init__(
        self,
        seed: int,
        cluster: ChaosCluster,
        proxy: FaultProxy,
        writer: HistoryWriter,
        clock: Callable[[], float],
        leader: Callable[[], str | None],
        kinds: tuple[str, ...] = FAULT_KINDS,
        timing: FaultTiming | None = None,
    ) -> None:
        unknown = set(kinds) - set(ALL_FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
        self.rng = random.Random(seed)
        self.cluster = cluster
        self.proxy = proxy
        self.writer = writer
        self.clock = clock
        self.leader = leader
        self.kinds = kinds
        self.timing = timing or FaultTiming()
        self.count = 0
        self.current: str | None = None
        self._ids = itertools.count(1)
        # Members removed by a membership fault, to add back when healing.
        self._removed: list[str] = []
        self.errors: list[str] = []
        self.kinds_done: set[str] = set()
        # Faults injected, as schedule entries (injected_schedule).
        self.injected: list[dict[str, Any]] = []
        self.started = 0.0
        self.schedule_done = False

    @property
    def every_kind_done(self) -> bool:
        return self.kinds_done >= set(self.kinds)

    async def run(self, stop: asyncio.Event, schedule: list[ScheduledFault] | None = None) -> None:
        """Inject faults until `stop`: drawn from the seed, or the given
        schedule (then wait for `stop` once it is done)."""
        self.started = self.clock()
        if schedule is not None:
            for spec in schedule:
                wait = spec.at - (self.clock() - self.started)
                # A heal that ran long delays the next fault rather than
                # overlapping it: faults come one at a time.
                if await _wait(stop, max(wait, 0.0)):
                    return
                await self._inject(spec.kind, spec.hold, stop, spec)
            self.schedule_done = True
            await stop.wait()
            return
        order = list(self.kinds)
        self.rng.shuffle(order)
        planned = iter(order)
        while not stop.is_set():
            if await _wait(stop, self.rng.uniform(*self.timing.gap)):
                return
            kind = next(planned, None) or self.rng.choice(self.kinds)
            hold = self.rng.uniform(*self.timing.hold)
            await self._inject(kind, hold, stop)

    def injected_schedule(self) -> dict[str, Any]:
        """The faults injected so far as a schedule file (schedule.py) with
        every target and amount resolved: `--schedule` replays them."""
        faults = [dict(f) for f in self.injected]
        for f, following in itertools.pairwise(faults):
            # Rounding may not make a fault overlap the next one.
            f["hold"] = round(min(f["hold"], following["at"] - f["at"]), 3)
        return {"faults": [f for f in faults if f["hold"] > 0]}

    async def _inject(self, kind: str, hold: float, stop: asyncio.Event, spec: ScheduledFault | None = None) -> None:
        nodes = self.cluster.ids
        start = self.clock()
        self.current = kind
        injected: Injected = await getattr(self, f"_{kind}")(nodes, spec)
        record: dict[str, Any] = {
            "type": "fault",
            "id": next(self._ids),
            "kind": kind,
            "nodes": injected.targets,
            "detail": injected.detail,
            "start": start,
        }
        if spec is not None:
            record["scheduled"] = spec.to_json()
        log.info("event=fault_start kind=%s nodes=%s detail=%r", kind, ",".join(injected.targets), injected.detail)
        try:
            await _wait(stop, hold)
        finally:
            held = self.clock() - start
            await injected.heal()
            record["detail"] = injected.detail
            record.update(injected.outcome)
            record["end"] = self.clock()
            self.writer.write(record)
            self.count += 1
            if not injected.detail.endswith(NOT_APPLIED):
                self.kinds_done.add(kind)
                at = round(start - self.started, 3)
                resolved = {"at": at, "kind": kind, "hold": round(held, 3), **injected.resolved}
                self.injected.append(resolved)
            self.current = None
            log.info("event=fault_end kind=%s nodes=%s", kind, ",".join(injected.targets))

    def _resolve(self, named: str, nodes: list[str]) -> str:
        """A node id, or for "controller" the controller now (a random node
        if none is known: the fault's detail then says "follower")."""
        if named != CONTROLLER:
            return named
        leader = self.leader()
        return leader if leader in nodes else self.rng.choice(nodes)

    def _victim(self, nodes: list[str], spec: ScheduledFault | None = None) -> str:
        """The node a schedule names, else half the time the controller, if
        there is one."""
        if named := _named(spec):
            return self._resolve(named[0], nodes)
        leader = self.leader()
        if leader in nodes and self.rng.random() < 0.5:
            return leader
        return self.rng.choice(nodes)

    def _option(self, spec: ScheduledFault | None, name: str, draw: Callable[[], Any]) -> Any:
        """A scheduled amount, or one drawn from the seed."""
        if spec is not None and name in spec.options:
            return spec.options[name]
        return draw()

    def _coin(self, choices: tuple[str, str]) -> str:
        return choices[0] if self.rng.random() < 0.5 else choices[1]

    # -- process faults --------------------------------------------------------------

    async def _kill(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        victim = self._victim(nodes, spec)
        was = "controller" if victim == self.leader() else "follower"
        self.cluster.kill(victim)

        async def heal() -> None:
            self.cluster.start(victim)

        return Injected([victim], f"SIGKILL ({was}), restarted after", heal, {"nodes": [victim]})

    async def _torn_tail(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        victim = self._victim(nodes, spec)
        tear = self._option(spec, "tear", lambda: self._coin(TEARS))
        self.cluster.kill(victim)
        what = self.cluster.tear_wal_tail(victim, self.rng, zeros=tear == "zeros")

        async def heal() -> None:
            self.cluster.start(victim)

        return Injected([victim], f"SIGKILL, torn tail: {what}", heal, {"nodes": [victim], "tear": tear})

    async def _pause(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        victim = self._victim(nodes, spec)
        was = "controller" if victim == self.leader() else "follower"
        self.cluster.pause(victim)

        async def heal() -> None:
            self.cluster.resume(victim)

        return Injected([victim], f"SIGSTOP ({was}), SIGCONT after", heal, {"nodes": [victim]})

    # -- network faults --------------------------------------------------------------

    def _block(self, pairs: list[tuple[str, str]]) -> Callable[[], Awaitable[None]]:
        """Block the given directed links; the heal unblocks them."""
        for src, dst in pairs:
            self.proxy.block(src, dst)

        async def heal() -> None:
            for src, dst in pairs:
                self.proxy.unblock(src, dst)

        return heal

    def _cut(self, a: list[str], b: list[str]) -> Callable[[], Awaitable[None]]:
        """Block every link between groups a and b, both directions."""
        return self._block([(x, y) for x in a for y in b] + [(y, x) for x in a for y in b])

    async def _partition(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        if named := _named(spec):
            side = list(named)
        else:
            shuffled = self.rng.sample(nodes, len(nodes))
            side = shuffled[: self.rng.randint(1, (len(nodes) - 1) // 2)]
        rest = [n for n in nodes if n not in side]
        detail = f"{'+'.join(sorted(side))} | {'+'.join(sorted(rest))}"
        return Injected(side, detail, self._cut(side, rest), {"nodes": side})

    async def _isolate_leader(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        named = _named(spec)
        victim = self._resolve(named[0] if named else CONTROLLER, nodes)
        others = [n for n in nodes if n != victim]
        what = "controller" if victim == self.leader() else "a node (not the controller)"
        return Injected([victim], f"{what} {victim} isolated", self._cut([victim], others), {"nodes": [victim]})

    async def _bridge(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        named = _named(spec)
        if spec is not None and named and "sides" in spec.options:  # schedule.py: sides need the bridge
            bridge = named[0]
            left, right = (list(s) for s in spec.options["sides"])
        else:
            shuffled = self.rng.sample(nodes, len(nodes))
            bridge = self._resolve(named[0], nodes) if named else shuffled[0]
            rest = [n for n in shuffled if n != bridge]
            left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
        detail = f"{'+'.join(sorted(left))} | {'+'.join(sorted(right))}, {bridge} talks to both"
        return Injected([bridge], detail, self._cut(left, right), {"nodes": [bridge], "sides": [left, right]})

    async def _asymmetric(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        victim = self._victim(nodes, spec)
        others = [n for n in nodes if n != victim]
        direction = self._option(spec, "direction", lambda: self._coin(DIRECTIONS))
        outbound = direction == "cannot_send"
        pairs = [(victim, o) for o in others] if outbound else [(o, victim) for o in others]
        what = "cannot send (hears everyone)" if outbound else "cannot hear (heard by everyone)"
        return Injected([victim], f"{victim} {what}", self._block(pairs), {"nodes": [victim], "direction": direction})

    def _links_of(self, nodes: list[str], spec: ScheduledFault | None) -> tuple[list[str], list[tuple[str, str]], str]:
        """All links, one node's links, or the two links of one pair."""
        if (named := _named(spec)) is not None:
            chosen = list(named)
        else:
            draw = self.rng.random()
            chosen = [] if draw < 0.25 else self.rng.sample(nodes, 2) if draw < 0.6 else [self._victim(nodes)]
        if not chosen:
            return list(nodes), [(a, b) for a in nodes for b in nodes if a != b], "all links"
        if len(chosen) == 2:
            a, b = chosen
            return [a, b], [(a, b), (b, a)], f"links between {a} and {b}"
        victim = chosen[0]
        return [victim], [(a, b) for a in nodes for b in nodes if a != b and victim in (a, b)], f"links of {victim}"

    async def _latency(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        targets, links, scope = self._links_of(nodes, spec)
        delay_ms = self._option(spec, "delay_ms", lambda: round(self.rng.uniform(30, 200), 1))
        jitter_ms = self._option(spec, "jitter_ms", lambda: round(delay_ms * self.rng.uniform(0.0, 0.5), 1))
        for src, dst in links:
            self.proxy.set_delay(src, dst, delay_ms / 1000, jitter_ms / 1000)

        async def heal() -> None:
            for src, dst in links:
                self.proxy.set_delay(src, dst, 0.0, 0.0)

        detail = f"{delay_ms:.0f} ms + up to {jitter_ms:.0f} ms jitter on {scope}"
        resolved = {"nodes": _scope_nodes(targets, nodes), "delay_ms": delay_ms, "jitter_ms": jitter_ms}
        return Injected(targets, detail, heal, resolved)

    async def _loss(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        targets, links, scope = self._links_of(nodes, spec)
        loss = self._option(spec, "loss", lambda: round(self.rng.uniform(0.1, 0.4), 3))
        for src, dst in links:
            self.proxy.set_loss(src, dst, loss)

        async def heal() -> None:
            for src, dst in links:
                self.proxy.set_loss(src, dst, 0.0)

        resolved = {"nodes": _scope_nodes(targets, nodes), "loss": loss}
        return Injected(targets, f"{loss:.0%} loss on {scope}", heal, resolved)

    # -- certificates -----------------------------------------------------------------

    async def _rotate_ca(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        if not self.cluster.tls:
            raise ValueError("rotate_ca needs a TLS run (--tls)")
        timeout = float(self._option(spec, "timeout", lambda: ROLL_TIMEOUT))
        started = self.clock()
        deadline = asyncio.get_running_loop().time() + timeout
        answer: dict[str, Any] | None = None
        last = ""
        # The signer may have no controller to propose to yet: retried, bounded.
        while answer is None and asyncio.get_running_loop().time() < deadline:
            status, doc = await self._trust_request("POST", "/v1/trust/rotate-ca", {})
            if status == 200 and isinstance(doc, dict) and "new_ca" in doc:
                answer = doc
                break
            last = f"{status} {doc}"[:200]
            await asyncio.sleep(0.3)  # pacing between attempts while the mesh settles
        roll: dict[str, Any] = {"done": False, "new_ca": None, "seconds": None}
        if answer is None:
            injected = Injected([SIGNER], f"rotate-ca on {SIGNER} refused: {last} {NOT_APPLIED}", _nothing, {})
            injected.outcome["roll"] = {**roll, "error": f"rotate-ca not accepted within {timeout:.0f} s: {last}"}
            return injected
        roll["new_ca"] = answer["new_ca"]
        injected = Injected([SIGNER], f"CA roll to {answer['new_ca'][:12]} started on {SIGNER}", _nothing, {})
        injected.outcome["roll"] = roll

        async def heal() -> None:
            # The workload goes on meanwhile: this waits, bounded, for the roll to end.
            error = "timed out"
            while asyncio.get_running_loop().time() < deadline:
                self.cluster.refresh_trust()
                status, doc = await self._trust_request("GET", "/v1/trust", None)
                phase = doc.get("ca", {}).get("phase") if status == 200 and isinstance(doc, dict) else None
                if phase == "done" and self.rolled_everywhere(answer["new_ca"]) and await self.apis_on_new_ca():
                    roll["done"] = True
                    roll["seconds"] = round(self.clock() - started, 3)
                    injected.detail += f", done in {roll['seconds']:.1f} s"
                    return
                error = f"phase {phase}" if phase else f"GET /v1/trust: {status}"
                await asyncio.sleep(0.1)  # polling the roll's end, with a deadline
            roll["error"] = f"the CA roll did not end within {timeout:.0f} s ({error})"
            injected.detail += f", NOT done within {timeout:.0f} s"
            self.errors.append(roll["error"])

        injected.heal = heal
        return injected

    def rolled_everywhere(self, new_ca: str) -> bool:
        """Every node's ca.pem holds the CA `new_ca` alone and its node
        certificate was issued by it."""
        for node in self.cluster.nodes.values():
            try:
                cas = local.bundle(node.data_dir)
                mine = local.node_cert(node.data_dir)
            except (OSError, ValueError):
                return False  # being rewritten
            if [ca.fingerprint(c) for c in cas] != [new_ca] or mine.issuer != cas[0].subject:
                return False
        return True

    async def apis_on_new_ca(self) -> bool:
        """Every node's HTTPS API passes a client that trusts only the CA in
        the signer's ca.pem (call once that is the new CA alone): its API
        certificate was renewed and reloaded too."""
        only_new = client_context(self.cluster.nodes[SIGNER].data_dir / "tls" / "ca.pem")
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=3),
                connector=aiohttp.TCPConnector(ssl=only_new),
                headers=self.cluster.header("reader"),
            ) as session:
                for nid in self.cluster.ids:
                    async with session.get(f"{self.cluster.url(nid)}/v1/status") as resp:
                        await resp.read()
                        if resp.status != 200:
                            return False
        except (aiohttp.ClientError, TimeoutError):
            return False
        return True

    async def _trust_request(self, method: str, path: str, body: Any) -> tuple[int | None, Any]:
        """An admin request to the signer's API: (status, document)."""
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=6), connector=self.cluster.connector()
                ) as session,
                session.request(
                    method,
                    f"{self.cluster.url(SIGNER)}{path}",
                    data=None if body is None else orjson.dumps(body),
                    headers={"Content-Type": "application/json", **self.cluster.header("admin")},
                ) as resp,
            ):
                raw = await resp.read()
                return resp.status, orjson.loads(raw) if raw else None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            return None, type(exc).__name__

    # -- membership -------------------------------------------------------------------

    async def _membership(self, nodes: list[str], spec: ScheduledFault | None) -> Injected:
        victim = self._victim(nodes, spec)
        ok, answer = await self.change_member(victim, "remove")
        # Added back when healing whatever the answer: a removal that timed
        # out may still have been committed.
        self._removed.append(victim)
        detail = f"remove {victim}: {answer}" + ("" if ok else f" {NOT_APPLIED}")

        async def heal() -> None:
            await self.restore_members()

        return Injected([victim], detail, heal, {"nodes": [victim]})

    async def restore_members(self, timeout: float = 30.0) -> bool:
        """Make every node a voter again, as the controller's status says the
        members are: add back as a learner what is missing, then promote
        (a removed node rejoins with its old log, a prefix of the
        controller's). Retries while there is no controller or a change is
        pending; False (with self.errors) if it cannot within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while loop.time() < deadline:
            members = await self._members()
            if members is not None:
                missing = [n for n in self.cluster.ids if n not in members]
                learners = [n for n in self.cluster.ids if members.get(n) is False]
                if not missing and not learners:
                    self._removed.clear()
                    return True
                nid, action = (missing[0], "add_learner") if missing else (learners[0], "promote")
                ok, last = await self.change_member(nid, action)
                if ok:
                    continue
            await asyncio.sleep(0.3)  # pacing between attempts while the mesh settles
        self.errors.append(f"members not restored within {timeout:.0f} s: {last}")
        return False

    async def _members(self) -> dict[str, bool] | None:
        """{member id: voter?} from the controller's /v1/status, or None."""
        leader = self.leader()
        if leader is None:
            return None
        doc = await self.cluster.status(leader)
        if doc is None or doc.get("role") != "leader":
            return None
        return {m["id"]: bool(m.get("voter")) for m in doc.get("members", [])}

    async def change_member(self, member: str, action: str) -> tuple[bool, str]:
        """POST /v1/members on the controller; (done, short answer)."""
        leader = self.leader()
        if leader is None:
            return False, "no controller known"
        # Every node lists every other in --peers (through the proxy), so
        # the controller already knows where to dial the member.
        body = {"id": member, "action": action}
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=6), connector=self.cluster.connector()
                ) as session,
                session.post(
                    f"{self.cluster.url(leader)}/v1/members",
                    data=orjson.dumps(body),
                    headers={"Content-Type": "application/json", **self.cluster.header("admin")},
                ) as resp,
            ):
                raw = await resp.read()
                doc = orjson.loads(raw) if raw else None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            return False, f"{type(exc).__name__}"
        if resp.status == 200:
            return True, "done"
        err = doc.get("error", {}) if isinstance(doc, dict) else {}
        return False, f"{resp.status} {err.get('code')}: {err.get('message', '')[:120]}"


async def _nothing() -> None:
    """The heal of a fault with nothing to undo."""


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until stop; True if stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
