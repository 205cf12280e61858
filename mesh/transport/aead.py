"""Confidentiality for pre-shared-secret links (no certificates): an AEAD
over the HMAC frames, after the handshake.

The hellos stay as they are (HMAC frames: node ids, nonces, API address;
no key or value). Once both nonces are known, each side derives two keys

    k_dialer, k_listener = HKDF-SHA256(secret, salt = dialer nonce | listener
        nonce, info = "hana-mesh aead v3 " | cluster | direction), 32 bytes each

and every later write on the connection is one sealed record:

    record = u32 len | ChaCha20-Poly1305(key of the writer, nonce = 0^4 | u64 n,
             plaintext = the frame bytes, aad = u32 len)

with `n` counting records from 0 in each direction. The keys are fresh per
connection (both nonces are random), so a counter nonce never repeats under
a key; records cannot be replayed, reordered, dropped in the middle or
reflected (each direction has its own key) without the open failing. The
HMAC frames inside keep their own checks (sequence, context), unchanged.

Why ChaCha20-Poly1305 rather than AES-GCM: display machines are often small
ARM boards (a Raspberry Pi 4 has no AES instructions), where ChaCha20 is
several times faster than AES and constant-time in software; on x86 with
AES-NI both run at gigabytes per second, far above what a node sends. It is
TLS 1.3's other mandatory cipher, in the same `cryptography` package.
Why not TLS with a PSK: Python's `ssl` module has no TLS 1.3 external-PSK
API, so a PSK cluster would need certificates after all.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.transport.codec import FrameError, FrameTooLarge

_LEN = struct.Struct(">I")
TAG_BYTES = 16
INFO = b"hana-mesh aead v3 "


class AeadFailed(FrameError):
    """A sealed record that does not open: tampered, replayed or reordered."""

    code = "aead_failed"


class StreamTruncated(AeadFailed):
    """The stream ended inside a sealed record: the peer went away while
    writing it (a killed process), or something cut the stream short."""


def derive_keys(secret: bytes, cluster: str, dialer_nonce: bytes, listener_nonce: bytes) -> tuple[bytes, bytes]:
    """(key of the dialer's records, key of the listener's records)."""
    out = []
    for direction in (b" dialer", b" listener"):
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=dialer_nonce + listener_nonce,
            info=INFO + cluster.encode() + direction,
        )
        out.append(hkdf.derive(secret))
    return out[0], out[1]


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def seal(self, data: bytes | memoryview) -> bytes:
        prefix = _LEN.pack(len(data) + TAG_BYTES)
        nonce = bytes(4) + self._n.to_bytes(8, "big")
        self._n += 1
        return prefix + self._aead.encrypt(nonce, bytes(data), prefix)


class Opener:
    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def open(self, prefix: bytes, sealed: bytes) -> bytes:
        nonce = bytes(4) + self._n.to_bytes(8, "big")
        self._n += 1
        try:
            return self._aead.decrypt(nonce, sealed, prefix)
        except InvalidTag:
            raise AeadFailed("sealed record does not open (tampered, replayed or another key)") from None


class SealedWriter:
    """The StreamWriter surface the transport uses, sealing every write."""

    def __init__(self, writer: asyncio.StreamWriter, key: bytes) -> None:
        self._w = writer
        self._sealer = Sealer(key)

    def write(self, data: bytes | memoryview) -> None:
        if len(data):
            self._w.write(self._sealer.seal(data))

    async def drain(self) -> None:
        await self._w.drain()

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self._w.transport

    def close(self) -> None:
        self._w.close()

    async def wait_closed(self) -> None:
        await self._w.wait_closed()

    def is_closing(self) -> bool:
        return self._w.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._w.get_extra_info(name, default)


class SealedReader:
    """The StreamReader surface the transport uses (`read`), opening records
    bounded by `max_record` before reading them."""

    def __init__(self, reader: asyncio.StreamReader, key: bytes, max_record: int) -> None:
        self._r = reader
        self._opener = Opener(key)
        self._max = max_record
        self._buf = b""

    async def read(self, n: int = -1) -> bytes:
        if not self._buf:
            try:
                prefix = await self._r.readexactly(_LEN.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise StreamTruncated("stream ended inside a sealed record's length") from None
                return b""
            (size,) = _LEN.unpack(prefix)
            if size <= TAG_BYTES or size > self._max + TAG_BYTES:
                raise FrameTooLarge(f"sealed record of {size} bytes (limit {self._max + TAG_BYTES})")
            try:
                sealed = await self._r.readexactly(size)
            except asyncio.IncompleteReadError:
                raise StreamTruncated("stream ended inside a sealed record") from None
            self._buf = self._opener.open(prefix, sealed)
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out
