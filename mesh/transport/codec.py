"""Peer frames: length-prefixed, stamped, authenticated. Pure (no sockets).

    frame = u32 body_len | body | mac(32)
    body  = b"HANA" | u8 version | u8 len | cluster | u8 len | sender | u64 seq | payload
    mac   = HMAC-SHA256(secret, context | u32 body_len | body)

`payload` is orjson of a `Message.to_dict()`. `context` binds frames to one
connection (the transport mixes both sides' handshake nonces into it), and
`seq` must increase by one per frame on a connection, so a recorded frame
cannot be replayed into another connection or out of order.

`FrameDecoder` is incremental: feed it bytes as they arrive, take whole
frames out. Every way a frame can be wrong raises a `FrameError` subclass
with a reason code, before anything of the frame is used: the MAC is checked
before the payload is parsed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from mesh.raft.errors import MessageDecodeError
from mesh.raft.messages import PROTOCOL_VERSION, Message

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
    why it did not (`error`, with the leader it knows of)."""

    to: str
    frm: str
    id: int
    index: int = 0
    term: int = 0
    error: str = ""
    leader: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "fwd_result",
            "to": self.to,
            "from": self.frm,
            "id": self.id,
            "index": self.index,
            "term": self.term,
            "error": self.error,
            "leader": self.leader,
        }


PeerPayload = Message | ForwardRequest | ForwardResponse


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
    if set(raw) - {"type", "to", "from", "id", "index", "term", "error", "leader"}:
        raise FrameMalformed("forward response: unknown fields")
    return ForwardResponse(
        text("to"), text("from"), number("id"), number("index"), number("term"), text("error"), text("leader", True)
    )


@dataclass(slots=True, frozen=True)
class Frame:
    sender: str
    seq: int
    payload: bytes

    def message(self) -> PeerPayload:
        """Decode the payload: a Raft message or a forwarded proposal
        (FrameMalformed if it is neither)."""
        try:
            raw: Any = orjson.loads(self.payload)
        except orjson.JSONDecodeError as exc:
            raise FrameMalformed(f"payload is not JSON: {exc}") from exc
        m: PeerPayload
        if isinstance(raw, dict) and raw.get("type") in ("fwd_propose", "fwd_result"):
            m = _forward_from_dict(raw)
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


def encode_frame(secret: bytes, cluster: str, sender: str, seq: int, payload: bytes, context: bytes = b"") -> bytes:
    body = b"".join(
        (
            MAGIC,
            bytes([PROTOCOL_VERSION]),
            _short(cluster, "cluster"),
            _short(sender, "sender"),
            _SEQ.pack(seq),
            payload,
        )
    )
    if len(body) + MAC_BYTES > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    prefix = _LEN.pack(len(body))
    mac = hmac.new(secret, context + prefix + body, hashlib.sha256).digest()
    return prefix + body + mac


def encode_message(secret: bytes, cluster: str, seq: int, m: PeerPayload, context: bytes = b"") -> bytes:
    return encode_frame(secret, cluster, m.frm, seq, orjson.dumps(m.to_dict()), context)


class FrameDecoder:
    """Splits a byte stream into verified frames."""

    def __init__(self, secret: bytes, cluster: str, context: bytes = b"", max_frame: int = MAX_FRAME_BYTES) -> None:
        self._secret = secret
        self._cluster = cluster.encode()
        self._context = context
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
        expected = hmac.new(self._secret, self._context + raw[: _LEN.size + body_len], hashlib.sha256).digest()
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
