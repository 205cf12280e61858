"""OSC packets in and out, through python-osc, with every bad packet refused.

python-osc parses well-formed packets, but on bad input it raises several
exception types (its ParseErrors, also IndexError and struct/Unicode errors
in places), logs unknown type tags to the root logger and skips them (so a
message can parse with fewer arguments than it carried), and loops for a
long time on a bundle element with a negative size. So every datagram is
first framed here, iteratively and bounded (size, elements, nesting, type
tag characters), and only then handed to python-osc inside one `try`: the
caller gets either the messages of the packet or a `BadPacket` naming the
`result` label of `hana_osc_packets_total` ("bad" or "too_large") and why.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

# The largest datagram read as OSC (a bundle of 64 faders is about 2.5 KB).
MAX_PACKET_BYTES = 16 * 1024
# Messages in one packet (all bundles flattened) and bundle nesting depth.
MAX_MESSAGES = 256
MAX_DEPTH = 4
# The OSC 1.0 type tags plus the common 1.1 ones python-osc reads.
KNOWN_TAGS = frozenset("ifsbhdtrmTFN[]")
_BUNDLE = b"#bundle\x00"


class BadPacket(ValueError):
    """A datagram that is not OSC hana can read. `result`: "bad" or "too_large"."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    address: str
    args: tuple[Any, ...]
    tags: str


def _string_end(data: bytes, start: int) -> int:
    """The index after the padded OSC string starting at `start` (a
    multiple of 4: a string and its NULs fill whole 4-byte words)."""
    nul = data.find(b"\x00", start)
    if nul < 0:
        raise BadPacket("bad", "unterminated string")
    end = (nul // 4 + 1) * 4
    if end > len(data):
        raise BadPacket("bad", "truncated string padding")
    return end


def _check_message(data: bytes) -> None:
    """The address and type tag strings of one message datagram are sound."""
    if not data.startswith(b"/"):
        raise BadPacket("bad", "not an OSC message (no leading /)")
    tags_at = _string_end(data, 0)
    if tags_at == len(data):
        return  # no type tag string: a message without arguments (OSC 1.0 allows it)
    if data[tags_at : tags_at + 1] != b",":
        raise BadPacket("bad", "type tag string does not start with ','")
    end = _string_end(data, tags_at)
    tags = data[tags_at + 1 : data.index(b"\x00", tags_at)]
    try:
        text = tags.decode("ascii")
    except UnicodeDecodeError:
        raise BadPacket("bad", "type tags are not ASCII") from None
    unknown = set(text) - KNOWN_TAGS
    if unknown:
        raise BadPacket("bad", f"unknown type tag(s) {''.join(sorted(unknown))!r}")
    if end > len(data):
        raise BadPacket("bad", "truncated")


_FIXED = {"i": 4, "f": 4, "r": 4, "m": 4, "c": 4, "h": 8, "d": 8, "t": 8}


def _flat(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, list):
            out += _flat(a)
        else:
            out.append(a)
    return out


def _args_size(tags: str, args: tuple[Any, ...]) -> int:
    """The bytes the arguments `args` of type tags `tags` take on the wire.
    python-osc pads a short float with NULs instead of refusing it (for
    Reaktor), so a truncated packet would parse with a made-up 0.0: the
    caller compares this with what the datagram really holds."""
    values = iter(_flat(list(args)))
    size = 0
    for tag in tags:
        if tag in "[]":
            continue
        value = next(values, None)
        if tag in _FIXED:
            size += _FIXED[tag]
        elif tag == "s":
            size += (len(str(value).encode()) // 4 + 1) * 4
        elif tag == "b":
            size += 4 + -(-len(value or b"") // 4) * 4
    return size


def _float32(value: float) -> float:
    """A 32-bit OSC float as the decimal its sender meant: 0.26f arrives as
    0.25999999046325684; 7 significant digits are what a float32 holds."""
    return float(f"{value:.7g}")


def frame(data: bytes) -> list[bytes]:
    """The message datagrams of one packet, bundles flattened in order.
    Raises BadPacket before anything is parsed if the framing is wrong or
    too large."""
    if len(data) > MAX_PACKET_BYTES:
        raise BadPacket("too_large", f"{len(data)} bytes (at most {MAX_PACKET_BYTES})")
    if not data:
        raise BadPacket("bad", "empty datagram")
    out: list[bytes] = []
    # (bundle bytes, offset of the next element, depth)
    stack: list[tuple[bytes, int, int]] = []

    def take(chunk: bytes, depth: int) -> None:
        if chunk.startswith(_BUNDLE):
            if depth >= MAX_DEPTH:
                raise BadPacket("too_large", f"bundles nested deeper than {MAX_DEPTH}")
            if len(chunk) < 16:
                raise BadPacket("bad", "truncated bundle header")
            stack.append((chunk, 16, depth + 1))
        elif chunk.startswith(b"/"):
            if len(out) >= MAX_MESSAGES:
                raise BadPacket("too_large", f"more than {MAX_MESSAGES} messages in one packet")
            if len(chunk) % 4:
                raise BadPacket("bad", "message size is not a multiple of 4")
            out.append(chunk)
        else:
            raise BadPacket("bad", "neither an OSC message nor a bundle")

    take(data, 0)
    while stack:
        chunk, at, depth = stack.pop()
        if at >= len(chunk):
            continue
        if at + 4 > len(chunk):
            raise BadPacket("bad", "truncated bundle element size")
        (size,) = struct.unpack(">i", chunk[at : at + 4])
        if size <= 0 or size % 4 or at + 4 + size > len(chunk):
            raise BadPacket("bad", f"bundle element size {size} does not fit the packet")
        stack.append((chunk, at + 4 + size, depth))
        take(chunk[at + 4 : at + 4 + size], depth)
    return out


def parse(data: bytes) -> list[Message]:
    """Every message of the packet `data` (a bundle's messages in order), or
    BadPacket. Nothing python-osc raises escapes: any exception there means
    the packet is bad."""
    messages = []
    for chunk in frame(data):
        _check_message(chunk)
        try:
            msg = OscMessage(chunk)
            address = msg.address
            args = tuple(msg.params)
        except Exception as exc:  # python-osc's parse errors, IndexError, struct.error, UnicodeDecodeError
            raise BadPacket("bad", f"{type(exc).__name__}: {exc}") from None
        tags_at = _string_end(chunk, 0)
        tags = ""
        if tags_at < len(chunk):
            tags = chunk[tags_at + 1 : chunk.index(b"\x00", tags_at)].decode("ascii")
            if _string_end(chunk, tags_at) + _args_size(tags, args) != len(chunk):
                raise BadPacket("bad", f"arguments do not match the type tags {tags!r} (truncated or trailing bytes)")
        if "f" in tags and "[" not in tags:
            args = tuple(_float32(a) if t == "f" else a for a, t in zip(args, tags, strict=True))
        messages.append(Message(address, args, tags))
    return messages


def encode_message(address: str, args: list[tuple[Any, str]]) -> bytes:
    """One OSC message datagram; `args` are (value, type tag) pairs."""
    builder = OscMessageBuilder(address)
    for value, tag in args:
        builder.add_arg(value, tag)
    return bytes(builder.build().dgram)


def encode_bundle(messages: list[bytes]) -> bytes:
    """One bundle ("immediately") holding the given message datagrams."""
    builder = OscBundleBuilder(IMMEDIATELY)
    for dgram in messages:
        builder.add_content(OscMessage(dgram))
    return bytes(builder.build().dgram)
