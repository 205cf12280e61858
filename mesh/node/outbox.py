"""The offline outbox of one node (issue 14): writes queued while the node
hears no controller, replayed in order when it hears one again. Sans-IO:
the node core owns an `Outbox`; where its records live is an injected
`OutboxStore` (the file of mesh/node/outbox_file.py in production, the
in-memory twin here for the simulator and tests).

A queued write is the state-machine command the client asked for plus what
makes its replay safe: `made` (the HLC stamp of the moment it was made; the
state machine decides lww by it), its author (and role) and its base
version per key (the version this node showed when it was made; manual
components make a write whose key changed since a conflict). A second
queued write of a key this node already has a queued write of is
*chained*: at replay its base is the version the first one produced, if it
was applied (else the base it was made on). Its request id
`ob.<node>.<incarnation>.<seq>` is stable across restarts, so a replay
repeated after a crash (or a lost answer) is applied once: the state
machine remembers the result of every offline write under its request id
and answers a repeat with it.

Fates: `queued` -> `replaying` (in flight; back to `queued` if the node
loses the controller or restarts) -> one final state: `applied`,
`superseded` (lww: a later edit won), `conflict` (manual: kept for a
person; the result names the conflict), `rejected` (invalid now: the
state machine's error). Final items are kept (the last `keep_final`) so a
client can learn a fate at `GET /v1/outbox`.

Records (each one frame of the file; `encode_frame`/`FrameReader`):
    {"t": "meta", "inc": <incarnation>, "next": <next seq>}   first record
    {"t": "q", "seq", "id", "rid", "op", "keys", "made", "base": {key: v},
     "chained": [key…], "cmd": <command>}                     a queued write
    {"t": "f", "seq", "state", "result"}                      its fate
A frame is `length (4 bytes, big-endian) | crc32 of the payload (4 bytes) |
payload (compact JSON object)`; a payload is at most `MAX_FRAME` bytes,
checked before it is read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from mesh.state.limits import MAX_COMMAND_BYTES

QUEUED, REPLAYING = "queued", "replaying"
APPLIED, SUPERSEDED, CONFLICT, REJECTED = "applied", "superseded", "conflict", "rejected"
FINAL = (APPLIED, SUPERSEDED, CONFLICT, REJECTED)
# Final items kept for clients to learn a fate.
KEEP_FINAL = 1000
HEADER = struct.Struct(">II")
# The largest payload a frame may carry: a command and its bookkeeping.
MAX_FRAME = MAX_COMMAND_BYTES + (64 << 10)


class OutboxCorrupt(Exception):
    """The outbox file is damaged before its end (not a torn tail)."""


class OutboxStore(Protocol):
    def load(self) -> list[dict[str, Any]]:
        """Every record, in order (a torn tail cut off)."""
        ...

    def append(self, records: list[dict[str, Any]]) -> None:
        """Add records; durable when it returns."""
        ...

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace every record at once (compaction); durable when it returns."""
        ...


class MemoryOutboxStore:
    """The in-memory twin (the simulator keeps it across a node's restarts)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def load(self) -> list[dict[str, Any]]:
        return [orjson.loads(orjson.dumps(r)) for r in self.records]

    def append(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(orjson.loads(orjson.dumps(r)) for r in records)

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        self.records = [orjson.loads(orjson.dumps(r)) for r in records]


# -- frames ---------------------------------------------------------------------------


def encode_frame(record: dict[str, Any]) -> bytes:
    payload = orjson.dumps(record)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"an outbox record of {len(payload)} bytes is over {MAX_FRAME}")
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(slots=True)
class Decoded:
    records: list[dict[str, Any]] = field(default_factory=list)
    good: int = 0  # bytes of whole, valid frames from the start
    torn: str = ""  # why the tail after `good` is cut ("" if none)


def decode_frames(buf: bytes) -> Decoded:
    """Records from a file's bytes (the caller bounds the file's size before
    reading it), frame by frame, each length checked before its payload is taken.
    A damaged last frame (short, wrong checksum, not JSON) or a zero-filled
    tail is a torn tail (`torn` says why; cut at `good`); damage followed by
    a valid frame raises OutboxCorrupt."""
    size = len(buf)
    out = Decoded()
    pos = 0
    while pos < size:
        problem = ""
        if size - pos < HEADER.size:
            problem = "short header"
        else:
            length, crc = HEADER.unpack_from(buf, pos)
            end = pos + HEADER.size + length
            if length > MAX_FRAME:
                problem = f"frame length {length} over {MAX_FRAME}"
            elif end > size:
                problem = "short frame"
            else:
                payload = buf[pos + HEADER.size : end]
                record: Any = None
                if zlib.crc32(payload) != crc:
                    problem = "checksum mismatch"
                else:
                    try:
                        record = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        problem = "not JSON"
                    if not problem and not isinstance(record, dict):
                        problem = "not a record"
                if not problem:
                    out.records.append(record)
                    pos = end
                    out.good = pos
                    continue
        if _valid_frame_after(buf, pos + 1):
            raise OutboxCorrupt(f"damaged frame at byte {pos} ({problem}) followed by valid ones")
        out.torn = problem
        break
    return out


def _valid_frame_after(buf: bytes, start: int) -> bool:
    """Whether a valid frame starts anywhere at or after `start` (a zero-filled
    or garbage tail has none: only a real record counts)."""
    size = len(buf)
    for pos in range(start, size - HEADER.size):
        length, crc = HEADER.unpack_from(buf, pos)
        end = pos + HEADER.size + length
        if length == 0 or length > MAX_FRAME or end > size:
            continue
        payload = buf[pos + HEADER.size : end]
        if payload[:1] == b"{" and zlib.crc32(payload) == crc:
            return True
    return False


# -- the outbox -------------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    seq: int
    id: str
    rid: str
    op: str
    keys: list[str]
    made: str
    base: dict[str, int]
    chained: list[str]
    command: dict[str, Any]
    state: str = QUEUED
    result: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def view(self) -> dict[str, Any]:
        """An item of `GET /v1/outbox`."""
        out: dict[str, Any] = {"id": self.id}
        if self.op == "txn":
            out["keys"] = list(self.keys)
        else:
            out["key"] = self.keys[0]
        out.update(op=self.op, state=self.state, made=self.made)
        if self.op == "txn":
            out["base_versions"] = dict(self.base)
        else:
            out["base_version"] = self.base.get(self.keys[0], 0)
        if self.result is not None:
            out["result"] = self.result
        return out

    def event(self) -> dict[str, Any]:
        """The watch message of its state."""
        out: dict[str, Any] = {"type": "outbox", "id": self.id}
        if self.op == "txn":
            out["keys"] = list(self.keys)
        else:
            out["key"] = self.keys[0]
        out["state"] = self.state
        if self.result is not None:
            out["result"] = self.result
        return out


def fate_of(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The final state of a replayed write from the state machine's answer,
    and the result to show (a conflict's names the conflict)."""
    error = result.get("error")
    if isinstance(error, dict):
        if error.get("code") == "conflict_kept":
            return CONFLICT, {"conflict": error.get("conflict_id"), "error": error}
        return REJECTED, result
    if result.get("superseded"):
        return SUPERSEDED, result
    results = result.get("results")
    if isinstance(results, list) and results and all(isinstance(r, dict) and r.get("superseded") for r in results):
        return SUPERSEDED, result
    return APPLIED, result


class Outbox:
    """The queued writes of one node (see the module docstring)."""

    def __init__(self, node_id: str, store: OutboxStore, incarnation: str, keep_final: int = KEEP_FINAL) -> None:
        self.node_id = node_id
        self.store = store
        self.keep_final = keep_final
        self.items: dict[int, Item] = {}
        # The items not final yet, in order, and per key the base of the
        # first of them and how many touch it (kept as they change: the
        # outbox may hold many thousands).
        self._open: dict[int, Item] = {}
        self._pending: dict[str, list[int]] = {}
        self.inc = incarnation
        self.next = 1
        self._records = 0
        # Per key, the version this node's last applied offline write of it produced.
        self.after: dict[str, int] = {}
        records = store.load()
        if records and records[0].get("t") == "meta":
            self.inc = str(records[0]["inc"])
            self.next = int(records[0]["next"])
        else:
            store.append([self._meta()])
        for rec in records:
            self._load(rec)
        self._records = len(records) or 1
        self._prune()

    def _meta(self) -> dict[str, Any]:
        return {"t": "meta", "inc": self.inc, "next": self.next}

    def _load(self, rec: dict[str, Any]) -> None:
        kind = rec.get("t")
        if kind == "q":
            item = Item(
                int(rec["seq"]),
                str(rec["id"]),
                str(rec["rid"]),
                str(rec["op"]),
                [str(k) for k in rec["keys"]],
                str(rec["made"]),
                {str(k): int(v) for k, v in rec["base"].items()},
                [str(k) for k in rec.get("chained", [])],
                dict(rec["cmd"]),
            )
            self.items[item.seq] = item
            self._opened(item)
            self.next = max(self.next, item.seq + 1)
        elif kind == "f":
            done = self.items.get(int(rec["seq"]))
            if done is not None:
                if not done.final:
                    self._closed(done)
                done.state = str(rec["state"])
                done.result = rec.get("result")
                self._note_applied(done)

    def _opened(self, item: Item) -> None:
        self._open[item.seq] = item
        for k in item.keys:
            entry = self._pending.get(k)
            if entry is None:
                self._pending[k] = [item.base.get(k, 0), 1]
            else:
                entry[1] += 1

    def _closed(self, item: Item) -> None:
        self._open.pop(item.seq, None)
        for k in item.keys:
            entry = self._pending.get(k)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._pending[k]

    # -- queueing ----------------------------------------------------------------------

    def queue(self, command: dict[str, Any], keys: list[str], made: str, versions: dict[str, int]) -> Item:
        """Keep `command` (made at `made`; `versions`: each key's version as
        this node shows it) durably; the item once the store says it is."""
        seq = self.next
        pending = self._pending
        base = {k: versions.get(k, 0) for k in keys}
        chained = [k for k in keys if k in pending]
        for k in chained:
            base[k] = pending[k][0]  # the base the first queued write of k was made on
        item = Item(
            seq,
            f"{self.node_id}.{seq}",
            f"ob.{self.node_id}.{self.inc}.{seq}",
            str(command["op"]),
            keys,
            made,
            base,
            chained,
            command,
        )
        record = {
            "t": "q",
            "seq": seq,
            "id": item.id,
            "rid": item.rid,
            "op": item.op,
            "keys": keys,
            "made": made,
            "base": base,
            "chained": chained,
            "cmd": command,
        }
        self.store.append([record])
        self._records += 1
        self.next = seq + 1
        self.items[seq] = item
        self._opened(item)
        return item

    def pending_keys(self) -> dict[str, int]:
        """Keys with a queued (not final) write: the base of the first."""
        return {k: v[0] for k, v in self._pending.items()}

    def queued(self) -> Iterator[Item]:
        """The items not final yet, in order (do not settle while iterating)."""
        return iter(self._open.values())

    def count(self) -> int:
        return len(self._open)

    # -- replay ------------------------------------------------------------------------

    def replay_command(self, item: Item) -> dict[str, Any]:
        """The command to propose for `item`: its request id, and each key's
        base (a chained key's from the write before it, if that applied)."""
        base = {k: self.after.get(k, v) if k in item.chained else v for k, v in item.base.items()}
        cmd = dict(item.command)
        cmd["rid"] = item.rid
        if item.op == "txn":
            cmd["ops"] = [
                {**op, "base_version": base[op["key"]]} if op.get("op") != "check" else op for op in cmd["ops"]
            ]
        else:
            cmd["base_version"] = base[item.keys[0]]
        return cmd

    def settle(self, item: Item, result: dict[str, Any]) -> Item:
        """Record `item`'s fate from the state machine's answer (durable)."""
        state, shown = fate_of(result)
        self.store.append([{"t": "f", "seq": item.seq, "state": state, "result": shown}])
        self._records += 1
        if not item.final:
            self._closed(item)
        item.state, item.result = state, shown
        self._note_applied(item)
        self._prune()
        return item

    def _note_applied(self, item: Item) -> None:
        if item.state != APPLIED or item.result is None:
            return
        res = item.result
        if item.op == "put" and isinstance(res.get("version"), int):
            self.after[item.keys[0]] = res["version"]
        elif item.op == "delete":
            self.after[item.keys[0]] = 0
        elif item.op == "txn":
            for r in res.get("results") or []:
                if isinstance(r, dict) and isinstance(r.get("key"), str):
                    if isinstance(r.get("version"), int):
                        self.after[r["key"]] = r["version"]
                    elif "deleted" in r:
                        self.after[r["key"]] = 0

    def _prune(self) -> None:
        finals = [s for s, i in self.items.items() if i.final]
        for seq in finals[: max(0, len(finals) - self.keep_final)]:
            del self.items[seq]
        if self._records > 4 * (len(self.items) + 256):
            self.compact()

    def compact(self) -> None:
        """Rewrite the store with what is held now."""
        records: list[dict[str, Any]] = [self._meta()]
        for item in self.items.values():
            records.append(
                {
                    "t": "q",
                    "seq": item.seq,
                    "id": item.id,
                    "rid": item.rid,
                    "op": item.op,
                    "keys": item.keys,
                    "made": item.made,
                    "base": item.base,
                    "chained": item.chained,
                    "cmd": item.command,
                }
            )
            if item.final:
                records.append({"t": "f", "seq": item.seq, "state": item.state, "result": item.result})
        self.store.rewrite(records)
        self._records = len(records)

    # -- views -------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """`GET /v1/outbox`: every item held, oldest first, and how many are queued."""
        return {"items": [i.view() for i in self.items.values()], "queued": self.count()}

    def overlay(self, prefix: str) -> dict[str, tuple[str, Any]]:
        """The last queued (not final) op per key under `prefix`: ("put",
        value) or ("delete", None), for local reads (`pending`)."""
        out: dict[str, tuple[str, Any]] = {}
        for item in self._open.values():
            cmd = item.command
            ops = cmd.get("ops") if item.op == "txn" else [cmd]
            for op in ops or []:
                key = op.get("key")
                kind = op.get("op")
                if not isinstance(key, str) or not key.startswith(prefix) or kind == "check":
                    continue
                out[key] = ("put", op.get("value")) if kind == "put" else ("delete", None)
        return out
