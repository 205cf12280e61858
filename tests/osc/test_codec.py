"""mesh/osc/codec.py: good packets parse; every bad one is a BadPacket with
its result label, whatever python-osc would have done with it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.osc import codec
from tests.osc.kit import bundle, message


def test_a_message_and_a_bundle_parse() -> None:
    m = message("/a/b", 0.5, "x", True, 3)
    [msg] = codec.parse(m)
    assert (msg.address, msg.args, msg.tags) == ("/a/b", (0.5, "x", True, 3), "fsTi")
    got = codec.parse(bundle(m, message("/c", 1.0)))
    assert [x.address for x in got] == ["/a/b", "/c"]


def test_nested_bundles_are_flattened_in_order() -> None:
    inner = bundle(message("/b", 2.0), message("/c", 3.0))
    outer = b"#bundle\x00" + b"\x00" * 7 + b"\x01"
    for part in (message("/a", 1.0), inner, message("/d", 4.0)):
        outer += struct.pack(">i", len(part)) + part
    assert [m.address for m in codec.parse(outer)] == ["/a", "/b", "/c", "/d"]


def test_encode_round_trips() -> None:
    dgram = codec.encode_message("/x", [(0.25, "f"), (7, "i"), (True, "T")])
    [m] = codec.parse(dgram)
    assert m.args == (0.25, 7, True)
    [a, b] = codec.parse(codec.encode_bundle([dgram, codec.encode_message("/y", [("s", "s")])]))
    assert (a.address, b.address, b.args) == ("/x", "/y", ("s",))


def _nested(depth: int) -> bytes:
    packet = message("/deep", 1.0)
    for _ in range(depth):
        packet = b"#bundle\x00" + b"\x00" * 7 + b"\x01" + struct.pack(">i", len(packet)) + packet
    return packet


BAD = {
    "truncated float": (message("/a", 0.5)[:-4], "bad"),
    "truncated string": (message("/a", "hello world")[:-4], "bad"),
    "cut mid-word": (message("/a", 0.5)[:-2], "bad"),
    "unknown type tag": (b"/a\x00\x00,x\x00\x00\x00\x00\x00\x01", "bad"),
    "tag string without comma": (b"/a\x00\x00fff\x00", "bad"),
    "type tag promises more than is there": (b"/a\x00\x00,ff\x00\x00\x00\x00\x00", "bad"),
    "unclosed array": (b"/a\x00\x00,[f\x00" + b"\x00" * 4, "bad"),
    "unterminated address": (b"/abc", "bad"),
    "not osc": (b"GET / HTTP/1.1\r\n", "bad"),
    "empty": (b"", "bad"),
    "negative bundle element size": (b"#bundle\x00" + b"\x00" * 8 + struct.pack(">i", -4) + b"/a\x00\x00", "bad"),
    "bundle element past the end": (b"#bundle\x00" + b"\x00" * 8 + struct.pack(">i", 400) + b"/a\x00\x00", "bad"),
    "truncated bundle header": (b"#bundle\x00\x00\x00", "bad"),
    "bundle holding garbage": (b"#bundle\x00" + b"\x00" * 8 + struct.pack(">i", 4) + b"zzzz", "bad"),
    "huge datagram": (message("/a", "x" * (codec.MAX_PACKET_BYTES + 10)), "too_large"),
    "too many messages": (bundle(*[message(f"/m{i}", 1.0) for i in range(codec.MAX_MESSAGES + 1)]), "too_large"),
    "bundles nested too deep": (_nested(codec.MAX_DEPTH + 1), "too_large"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_packets_are_refused_with_their_label(name: str) -> None:
    data, result = BAD[name]
    with pytest.raises(codec.BadPacket) as info:
        codec.parse(data)
    assert info.value.result == result, info.value.reason


def test_python_osc_alone_would_accept_an_unknown_tag_silently() -> None:
    """Why the type tags are checked here: python-osc skips an unknown tag
    (logging to the root logger) and returns a message with fewer arguments."""
    from pythonosc.osc_message import OscMessage

    data = BAD["unknown type tag"][0]
    assert OscMessage(data).params == []  # accepted by the library
    with pytest.raises(codec.BadPacket):
        codec.parse(data)


def test_nesting_up_to_the_limit_is_fine() -> None:
    assert [m.address for m in codec.parse(_nested(codec.MAX_DEPTH - 1))] == ["/deep"]


def _parsed_or_refused(data: bytes) -> None:
    """Messages with addresses, or a BadPacket with a label and a reason:
    nothing else escapes (any other exception fails the test)."""
    try:
        messages = codec.parse(data)
    except codec.BadPacket as exc:
        assert exc.result in ("bad", "too_large") and exc.reason
    else:
        assert all(m.address.startswith("/") for m in messages)  # an empty bundle holds none


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_never_raise_anything_but_bad_packet(data: bytes) -> None:
    _parsed_or_refused(data)


_GOOD = bundle(message("/a/b", 0.5, "x", True), message("/c", 3), message("/d", [1.0, 2.0]))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(_GOOD) - 1), st.integers(0, 255), st.integers(0, len(_GOOD)))
def test_mutated_packets_never_raise_anything_but_bad_packet(at: int, byte: int, cut: int) -> None:
    data = bytearray(_GOOD)
    data[at] = byte
    _parsed_or_refused(bytes(data[: max(cut, 1)]))


def test_a_float32_arrives_as_the_decimal_that_was_sent() -> None:
    [m] = codec.parse(message("/f", 0.26, 0.1))
    assert m.args == (0.26, 0.1)  # not 0.25999999046325684, 0.10000000149011612
    [d] = codec.parse(codec.encode_message("/d", [(0.1, "d")]))
    assert d.args == (0.1,)
