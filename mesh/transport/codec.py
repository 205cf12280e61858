"""Peer frames: length-prefixed, stamped, authenticated. Pure (no sockets).

    frame = u32 body_len | body | mac(32)
    body  = b"HANA" | u8 version | u8 len | cluster | u8 len | sender | u64 seq | payload
    mac   = HMAC-SHA256(secret, context | u32 body_len | body)

`payload` is orjson of a `Message.to_dict()` (or of a forwarded write, of
a snapshot header, or of a `LiveFrame`: live parameter values, which never
enter the log, or of a `LiveInterest`: which of them a node wants; a live
frame or interest that is authenticated but malformed raises
`LiveMalformed`, which the receiver drops and counts without closing the
connection). `context` binds frames to one connection (the transport
mixes both sides' handshake nonces into it), and `seq` must increase by one
per frame on a connection, so a recorded frame cannot be replayed into
another connection or out of order.

Snapshots (protocol 2) travel out of band: one frame with a
`SnapshotHeader` (the MT.SNAP message without its data, plus the data's
size), then the data as raw chunk frames (the payload is the bytes
themselves: no base64, no JSON), each authenticated on the connection's
sequence like any frame; the receiver answers with a `SnapshotResult`.
`encode_chunk_frame` MACs a chunk in place (a memoryview of the snapshot),
so the sender never copies the whole snapshot.

`FrameDecoder` is incremental: feed it bytes as they arrive, take whole
frames out. Every way a frame can be wrong raises a `FrameError` subclass
with a reason code, before anything of the frame is used: the MAC is checked
before the payload is parsed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from mesh.raft.errors import MessageDecodeError
from mesh.raft.messages import PROTOCOL_VERSION, Message, MessageType, Snapshot

MAGIC = b"HANA"
MAC_BYTES = 32
MAX_FRAME_BYTES = 64 << 20
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


class FrameError(Exception):
    """A frame that must be dropped. `code` names why, for logs and metrics."""

    code = "bad_frame"


class FrameTooLarge(FrameError):
    code = "too_large"


class FrameBadMagic(FrameError):
    code = "bad_magic"


class FrameVersionMismatch(FrameError):
    code = "version_mismatch"


class FrameWrongCluster(FrameError):
    code = "wrong_cluster"


class FrameBadMac(FrameError):
    code = "bad_mac"


class FrameMalformed(FrameError):
    code = "malformed"


class FrameTruncated(FrameError):
    code = "truncated"


class FrameUnexpected(FrameError):
    """Bytes where the protocol allows none (after a hello, before the
    answer; from a listener on a plain connection)."""

    code = "unexpected_bytes"


@dataclass(slots=True, frozen=True)
class ForwardRequest:
    """A follower asking the controller to append a command for it."""

    to: str
    frm: str
    id: int
    data: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"type": "fwd_propose", "to": self.to, "from": self.frm, "id": self.id, "data": self.data.decode()}


@dataclass(slots=True, frozen=True)
class ForwardResponse:
    """Where the controller appended a forwarded command (index, term), or
    why it did not: `error` (with the leader it knows of) when another
    attempt may succeed, `rejection` ({"code", "message"}) when the command
    itself is invalid and was refused before the log (final: no retry)."""

    to: str
    frm: str
    id: int
    index: int = 0
    term: int = 0
    error: str = ""
    leader: str | None = None
    rejection: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "type": "fwd_result",
            "to": self.to,
            "from": self.frm,
            "id": self.id,
            "index": self.index,
            "term": self.term,
            "error": self.error,
            "leader": self.leader,
        }
        if self.rejection is not None:
            d["rejection"] = self.rejection
        return d


@dataclass(slots=True, frozen=True)
class SnapshotHeader:
    """Opens a snapshot stream: `message` is the MT.SNAP message with empty
    snapshot data; `size` bytes of data follow as raw chunk frames."""

    to: str
    frm: str
    size: int
    message: Message

    @classmethod
    def of(cls, m: Message) -> SnapshotHeader:
        if m.type != MessageType.SNAP or m.snapshot is None:
            raise ValueError("a snapshot header needs an MT.SNAP message")
        bare = dataclasses.replace(m, snapshot=Snapshot(m.snapshot.meta, b""))
        return cls(m.to, m.frm, len(m.snapshot.data), bare)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "snap_begin",
            "to": self.to,
            "from": self.frm,
            "size": self.size,
            "message": self.message.to_dict(),
        }

    def with_data(self, data: bytes) -> Message:
        """The ordinary message, once all `size` bytes arrived."""
        assert self.message.snapshot is not None
        return dataclasses.replace(self.message, snapshot=Snapshot(self.message.snapshot.meta, data))


@dataclass(slots=True, frozen=True)
class SnapshotResult:
    """The receiver's answers on a snapshot stream: after the header
    (`stage` "accept": go ahead, or refused and why, before any data moves),
    and after the data ("done": handed to its node, or why not)."""

    to: str
    frm: str
    stage: str
    ok: bool
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "snap_result",
            "to": self.to,
            "from": self.frm,
            "stage": self.stage,
            "ok": self.ok,
            "error": self.error,
        }


class LiveItem(NamedTuple):
    """One live parameter value: `key` set to `value` by node `source` as
    its `seq`-th live value (per source, increasing), in `gesture` (None:
    a set without a gesture id)."""

    key: str
    value: Any
    source: str
    seq: int
    gesture: str | None


@dataclass(slots=True, frozen=True)
class LiveFrame:
    """Live parameter values on their way to a peer (mesh/node/live.py):
    never part of the log, coalesced per (source, key) while queued."""

    to: str
    frm: str
    items: tuple[LiveItem, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "live", "to": self.to, "from": self.frm, "items": [list(i) for i in self.items]}


# Items in one live frame, at most (a sender splits larger batches).
MAX_LIVE_ITEMS = 1024


class LiveMalformed(FrameMalformed):
    """An authenticated live frame that does not parse: dropped and counted;
    the connection (and the Raft traffic on it) goes on."""

    code = "live_malformed"


def _live_from_dict(raw: dict[str, Any]) -> LiveFrame:
    if set(raw) != {"type", "to", "from", "items"}:
        raise LiveMalformed("live frame: wrong fields")
    to, frm, items = raw["to"], raw["from"], raw["items"]
    if not isinstance(to, str) or not to or not isinstance(frm, str) or not frm:
        raise LiveMalformed("live frame: to/from must be node ids")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_LIVE_ITEMS:
        raise LiveMalformed(f"live frame: items must be a list of 1 to {MAX_LIVE_ITEMS}")
    # (JSON decodes to exact types: `type(x) is str`, not isinstance. A
    # frame's items mostly share their source and gesture: each distinct
    # one is checked once.)
    source_ok: Any = _UNSET
    gesture_ok: Any = _UNSET
    for item in items:
        if type(item) is not list or len(item) != 5:
            raise LiveMalformed("live frame: an item is [key, value, source, seq, gesture]")
        key, _value, source, seq, gesture = item
        if type(key) is not str or not 0 < len(key) <= 1024 or type(seq) is not int or not 0 <= seq < _SEQ_LIMIT:
            raise LiveMalformed("live frame: bad item (key, source, seq or gesture)")
        if source != source_ok:
            if type(source) is not str or not 0 < len(source) <= 255:
                raise LiveMalformed("live frame: bad item (key, source, seq or gesture)")
            source_ok = source
        if gesture is not None and gesture != gesture_ok:
            if type(gesture) is not str or not 0 < len(gesture) <= 256:
                raise LiveMalformed("live frame: bad item (key, source, seq or gesture)")
            gesture_ok = gesture
    # Each item checked: made a LiveItem without a Python call per item.
    return LiveFrame(to, frm, tuple(map(_live_item, items)))


_UNSET = object()
_SEQ_LIMIT = 1 << 63
_live_item = functools.partial(tuple.__new__, LiveItem)


@dataclass(slots=True, frozen=True)
class LiveInterest:
    """Which live values node `frm` wants (protocol 5): those whose key
    starts with one of `prefixes` (its subscribers'), or every one
    (`prefixes` None). A node with no subscriber says (): its peers stop
    sending it values nobody there would see (mesh/node/live.py)."""

    to: str
    frm: str
    prefixes: tuple[str, ...] | None

    def to_dict(self) -> dict[str, Any]:
        prefixes = None if self.prefixes is None else list(self.prefixes)
        return {"type": "live_interest", "to": self.to, "from": self.frm, "prefixes": prefixes}


# Prefixes in one interest, at most (a node with more says "everything").
MAX_INTEREST_PREFIXES = 64


def _interest_from_dict(raw: dict[str, Any]) -> LiveInterest:
    if set(raw) != {"type", "to", "from", "prefixes"}:
        raise LiveMalformed("live interest: wrong fields")
    to, frm, prefixes = raw["to"], raw["from"], raw["prefixes"]
    if not isinstance(to, str) or not to or not isinstance(frm, str) or not frm:
        raise LiveMalformed("live interest: to/from must be node ids")
    if prefixes is None:
        return LiveInterest(to, frm, None)
    if not isinstance(prefixes, list) or len(prefixes) > MAX_INTEREST_PREFIXES:
        raise LiveMalformed(f"live interest: prefixes must be null or a list of at most {MAX_INTEREST_PREFIXES}")
    if not all(isinstance(p, str) and 0 < len(p) <= 1024 for p in prefixes):
        raise LiveMalformed("live interest: a prefix is a string of 1 to 1024 characters")
    return LiveInterest(to, frm, tuple(prefixes))


PeerPayload = Message | ForwardRequest | ForwardResponse | LiveFrame | LiveInterest
ControlPayload = SnapshotHeader | SnapshotResult
_CONTROL_TYPES = ("fwd_propose", "fwd_result", "snap_begin", "snap_result")


def _forward_from_dict(raw: dict[str, Any]) -> ForwardRequest | ForwardResponse:
    def text(key: str, optional: bool = False) -> Any:
        v = raw.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, str) or (not v and key in ("to", "from")):
            raise FrameMalformed(f"forward.{key}: expected text")
        return v

    def number(key: str) -> int:
        v = raw.get(key, 0)
        if type(v) is not int or v < 0:
            raise FrameMalformed(f"forward.{key}: expected a non-negative integer")
        return v

    if raw.get("type") == "fwd_propose":
        if set(raw) != {"type", "to", "from", "id", "data"}:
            raise FrameMalformed("forward request: wrong fields")
        return ForwardRequest(text("to"), text("from"), number("id"), text("data").encode())
    if set(raw) - {"type", "to", "from", "id", "index", "term", "error", "leader", "rejection"}:
        raise FrameMalformed("forward response: unknown fields")
    rejection = raw.get("rejection")
    if rejection is not None and (
        not isinstance(rejection, dict)
        or set(rejection) != {"code", "message"}
        or not all(isinstance(v, str) and 0 < len(v) <= 4096 for v in rejection.values())
    ):
        raise FrameMalformed("forward response: rejection must be {code, message} short texts")
    return ForwardResponse(
        text("to"),
        text("from"),
        number("id"),
        number("index"),
        number("term"),
        text("error"),
        text("leader", True),
        rejection,
    )


def _snapshot_from_dict(raw: dict[str, Any]) -> SnapshotHeader | SnapshotResult:
    to, frm = raw.get("to"), raw.get("from")
    if not isinstance(to, str) or not to or not isinstance(frm, str) or not frm:
        raise FrameMalformed("snapshot control: to/from must be node ids")
    if raw.get("type") == "snap_result":
        if set(raw) != {"type", "to", "from", "stage", "ok", "error"}:
            raise FrameMalformed("snapshot result: wrong fields")
        stage, ok, error = raw["stage"], raw["ok"], raw["error"]
        if (
            stage not in ("accept", "done")
            or not isinstance(ok, bool)
            or not isinstance(error, str)
            or len(error) > 1000
        ):
            raise FrameMalformed("snapshot result: stage accept|done, ok a boolean, error short text")
        return SnapshotResult(to, frm, stage, ok, error)
    if set(raw) != {"type", "to", "from", "size", "message"}:
        raise FrameMalformed("snapshot header: wrong fields")
    size = raw["size"]
    if type(size) is not int or size < 0 or size >= 1 << 63:
        raise FrameMalformed("snapshot header: size must be a non-negative integer")
    try:
        m = Message.from_dict(raw["message"])
    except MessageDecodeError as exc:
        raise FrameMalformed(str(exc)) from exc
    if m.type != MessageType.SNAP or m.snapshot is None or m.snapshot.data:
        raise FrameMalformed("snapshot header: the message must be an MT.SNAP without data")
    if m.to != to or m.frm != frm:
        raise FrameMalformed("snapshot header: to/from differ from the message's")
    return SnapshotHeader(to, frm, size, m)


@dataclass(slots=True, frozen=True)
class Frame:
    sender: str
    seq: int
    payload: bytes

    def message(self) -> PeerPayload | ControlPayload:
        """Decode the payload: a Raft message, a forwarded proposal or a
        snapshot stream's header or result (FrameMalformed if none)."""
        try:
            raw: Any = orjson.loads(self.payload)
        except orjson.JSONDecodeError as exc:
            raise FrameMalformed(f"payload is not JSON: {exc}") from exc
        m: PeerPayload | ControlPayload
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind in ("fwd_propose", "fwd_result"):
            m = _forward_from_dict(raw)
        elif kind in ("snap_begin", "snap_result"):
            m = _snapshot_from_dict(raw)
        elif kind == "live":
            m = _live_from_dict(raw)
        elif kind == "live_interest":
            m = _interest_from_dict(raw)
        else:
            try:
                m = Message.from_dict(raw)
            except MessageDecodeError as exc:
                raise FrameMalformed(str(exc)) from exc
        if m.frm != self.sender:
            raise FrameMalformed(f"message from {m.frm!r} inside a frame from {self.sender!r}")
        return m


def _short(value: str, what: str) -> bytes:
    raw = value.encode()
    if not raw or len(raw) > 255:
        raise ValueError(f"{what} must be 1..255 bytes of UTF-8")
    return bytes([len(raw)]) + raw


@functools.lru_cache(maxsize=64)
def _head(cluster: str, sender: str) -> bytes:
    """The fixed start of a body (magic, version, cluster, sender): the
    same for every frame a node sends to its cluster."""
    return b"".join((MAGIC, bytes([PROTOCOL_VERSION]), _short(cluster, "cluster"), _short(sender, "sender")))


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes, context: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with `secret` that has read `context`: one per
    connection and direction; each frame's MAC starts from a copy of it
    (the same digest as a fresh HMAC over context | frame, without keying
    one per frame)."""
    return hmac.new(secret, context, hashlib.sha256)


def encode_frame(
    secret: bytes,
    cluster: str,
    sender: str,
    seq: int,
    payload: bytes,
    context: bytes = b"",
    max_frame: int = MAX_FRAME_BYTES,
) -> bytes:
    body = b"".join((_head(cluster, sender), _SEQ.pack(seq), payload))
    if len(body) + MAC_BYTES > max_frame:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds {max_frame}")
    prefix = _LEN.pack(len(body))
    mac = _keyed(secret, context).copy()
    mac.update(prefix)
    mac.update(body)
    return prefix + body + mac.digest()


def encode_message(
    secret: bytes,
    cluster: str,
    seq: int,
    m: PeerPayload | ControlPayload,
    context: bytes = b"",
    max_frame: int = MAX_FRAME_BYTES,
) -> bytes:
    return encode_frame(secret, cluster, m.frm, seq, orjson.dumps(m.to_dict()), context, max_frame)


def encode_chunk_frame(
    secret: bytes, cluster: str, sender: str, seq: int, chunk: memoryview, context: bytes
) -> tuple[bytes, bytes]:
    """A raw data frame whose payload is `chunk`, without copying it: returns
    (head, mac); write head, then the chunk itself, then mac."""
    head = b"".join(
        (MAGIC, bytes([PROTOCOL_VERSION]), _short(cluster, "cluster"), _short(sender, "sender"), _SEQ.pack(seq))
    )
    prefix = _LEN.pack(len(head) + len(chunk))
    mac = hmac.new(secret, context + prefix + head, hashlib.sha256)
    mac.update(chunk)
    return prefix + head, mac.digest()


def frame_overhead(cluster: str, sender: str) -> int:
    """Bytes a frame adds around its payload."""
    return _LEN.size + len(MAGIC) + 1 + 1 + len(cluster.encode()) + 1 + len(sender.encode()) + _SEQ.size + MAC_BYTES


class FrameDecoder:
    """Splits a byte stream into verified frames."""

    def __init__(self, secret: bytes, cluster: str, context: bytes = b"", max_frame: int = MAX_FRAME_BYTES) -> None:
        self._secret = secret
        self._cluster = cluster.encode()
        self._context = context
        self._keyed = hmac.new(secret, context, hashlib.sha256)
        self._max = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending_bytes(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        """The next whole frame, None if more bytes are needed. After a
        FrameError the stream is out of sync: close the connection."""
        if len(self._buf) < _LEN.size:
            return None
        (body_len,) = _LEN.unpack_from(self._buf)
        if body_len + MAC_BYTES > self._max:
            raise FrameTooLarge(f"announced frame of {body_len} bytes exceeds {self._max}")
        total = _LEN.size + body_len + MAC_BYTES
        if len(self._buf) < total:
            return None
        raw = bytes(self._buf[:total])
        del self._buf[:total]
        body = raw[_LEN.size : _LEN.size + body_len]
        mac = raw[_LEN.size + body_len :]
        # Authenticate before looking inside: nothing unauthenticated is parsed
        # beyond the length.
        check = self._keyed.copy()
        check.update(memoryview(raw)[: _LEN.size + body_len])
        expected = check.digest()
        if not hmac.compare_digest(mac, expected):
            if body.startswith(MAGIC) and len(body) > 5 and body[4] != PROTOCOL_VERSION:
                raise FrameVersionMismatch(f"protocol version {body[4]}, this node speaks {PROTOCOL_VERSION}")
            raise FrameBadMac("frame authentication failed (wrong secret or tampered frame)")
        return self._parse_body(body)

    def _parse_body(self, body: bytes) -> Frame:
        if not body.startswith(MAGIC):
            raise FrameBadMagic("not a hana mesh frame")
        pos = len(MAGIC)
        if len(body) < pos + 1:
            raise FrameMalformed("body ends before the version")
        version = body[pos]
        pos += 1
        if version != PROTOCOL_VERSION:
            raise FrameVersionMismatch(f"protocol version {version}, this node speaks {PROTOCOL_VERSION}")
        cluster, pos = _read_short(body, pos, "cluster")
        if cluster != self._cluster:
            raise FrameWrongCluster(f"frame of cluster {cluster.decode(errors='replace')!r}")
        sender, pos = _read_short(body, pos, "sender")
        if len(body) < pos + _SEQ.size:
            raise FrameMalformed("body ends before the sequence number")
        (seq,) = _SEQ.unpack_from(body, pos)
        pos += _SEQ.size
        try:
            sender_id = sender.decode()
        except UnicodeDecodeError as exc:
            raise FrameMalformed("sender is not UTF-8") from exc
        return Frame(sender_id, seq, body[pos:])

    def finish(self) -> None:
        """Call at end of stream: leftover bytes mean a truncated frame."""
        if self._buf:
            n = len(self._buf)
            self._buf.clear()
            raise FrameTruncated(f"stream ended inside a frame ({n} bytes left)")


def _read_short(body: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if len(body) < pos + 1:
        raise FrameMalformed(f"body ends before the {what}")
    n = body[pos]
    pos += 1
    if n == 0 or len(body) < pos + n:
        raise FrameMalformed(f"{what} length {n} is out of bounds")
    return body[pos : pos + n], pos + n
