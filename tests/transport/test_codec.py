"""Peer frame codec: round trips, and every kind of bad frame is refused."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.raft.messages import Entry, Message, MessageType
from mesh.transport.codec import (
    FrameBadMac,
    FrameBadMagic,
    FrameDecoder,
    FrameError,
    FrameMalformed,
    FrameTooLarge,
    FrameTruncated,
    FrameVersionMismatch,
    FrameWrongCluster,
    encode_frame,
    encode_message,
)

SECRET = b"s3cret"


def sample_message(i: int = 1) -> Message:
    return Message(MessageType.APP, "b", "a", term=3, index=i, log_term=2, entries=[Entry(i + 1, 3, b"payload")])


def decode_all(stream: bytes, secret: bytes = SECRET, cluster: str = "hana", context: bytes = b"") -> list:
    dec = FrameDecoder(secret, cluster, context)
    dec.feed(stream)
    out = []
    while (frame := dec.next_frame()) is not None:
        out.append(frame)
    dec.finish()
    return out


def test_round_trip_in_pieces() -> None:
    msgs = [sample_message(i) for i in range(1, 6)]
    stream = b"".join(encode_message(SECRET, "hana", seq, m, b"ctx") for seq, m in enumerate(msgs))
    dec = FrameDecoder(SECRET, "hana", b"ctx")
    rng = random.Random(7)
    got = []
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 40)
        dec.feed(stream[pos : pos + step])
        pos += step
        while (frame := dec.next_frame()) is not None:
            got.append(frame)
    dec.finish()
    assert [f.seq for f in got] == list(range(5))
    assert [f.message() for f in got] == msgs


def test_wrong_secret_is_refused() -> None:
    frame = encode_message(b"other", "hana", 0, sample_message())
    with pytest.raises(FrameBadMac):
        decode_all(frame)


def test_frame_bound_to_its_connection_context() -> None:
    frame = encode_message(SECRET, "hana", 0, sample_message(), context=b"conn-1")
    with pytest.raises(FrameBadMac):
        decode_all(frame, context=b"conn-2")


def test_other_cluster_is_refused() -> None:
    frame = encode_message(SECRET, "other-show", 0, sample_message())
    with pytest.raises(FrameWrongCluster):
        decode_all(frame)


def test_old_protocol_version_is_named() -> None:
    body_len = len(encode_message(SECRET, "hana", 0, sample_message())) - 4 - 32
    frame = bytearray(encode_message(SECRET, "hana", 0, sample_message()))
    assert body_len > 5
    frame[4 + 4] = 0  # version byte
    with pytest.raises(FrameVersionMismatch):
        decode_all(bytes(frame))


def test_truncated_stream_is_reported() -> None:
    frame = encode_message(SECRET, "hana", 0, sample_message())
    with pytest.raises(FrameTruncated):
        decode_all(frame[:-5])


def test_announced_oversize_frame_is_refused_before_buffering() -> None:
    dec = FrameDecoder(SECRET, "hana", max_frame=1024)
    dec.feed((10_000).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_authenticated_garbage_payload_is_malformed() -> None:
    frame = encode_frame(SECRET, "hana", "a", 0, b"{not json")
    (f,) = decode_all(frame)
    with pytest.raises(FrameMalformed):
        f.message()
    bad_field = encode_frame(SECRET, "hana", "a", 0, orjson.dumps({"type": "app", "to": "b", "from": "a", "term": -1}))
    (f,) = decode_all(bad_field)
    with pytest.raises(FrameMalformed):
        f.message()


def test_sender_spoofing_inside_payload_is_refused() -> None:
    m = sample_message()
    frame = encode_frame(SECRET, "hana", "mallory", 0, orjson.dumps(m.to_dict()))
    (f,) = decode_all(frame)
    with pytest.raises(FrameMalformed):
        f.message()


def test_not_a_frame_is_bad_magic_once_authenticated() -> None:
    # Authenticated with the right secret but not our layout.
    import hashlib
    import hmac

    body = b"XXXX" + b"\x01" * 20
    prefix = len(body).to_bytes(4, "big")
    frame = prefix + body + hmac.new(SECRET, prefix + body, hashlib.sha256).digest()
    with pytest.raises(FrameBadMagic):
        decode_all(frame)


@settings(max_examples=2500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_yield_a_frame(data: bytes) -> None:
    dec = FrameDecoder(SECRET, "hana", max_frame=1 << 16)
    dec.feed(data)
    try:
        frame = dec.next_frame()
    except FrameError:
        return
    assert frame is None


@settings(max_examples=1500, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_flipped_byte_is_detected(pos_seed: int, flip: int) -> None:
    frame = bytearray(encode_message(SECRET, "hana", 9, sample_message()))
    pos = pos_seed % len(frame)
    frame[pos] ^= flip or 1
    dec = FrameDecoder(SECRET, "hana", max_frame=1 << 16)
    dec.feed(bytes(frame))
    try:
        result = dec.next_frame()
    except FrameError:
        return
    # A corrupted length prefix can only make the decoder wait for more bytes.
    assert result is None
    assert pos < 4
