"""Encryption at rest of the log and snapshots (`serve --encrypt-at-rest
KEYFILE`, issue 18).

From the operator's 32-byte key, HKDF-SHA256 derives two keys: one for
AES-256-GCM, one for HMAC-SHA256. What is protected, and how:

- ENTRY records: the fixed prefix (index, term, entry type: 17 bytes) stays
  in clear, so that replay indexes the log without decrypting, and is the
  AEAD's associated data (authenticated); the entry's data is
  `nonce (12 random bytes) | AES-GCM(data) | tag (16)`.
- Every other record (SEGMENT, TRUNCATE, COMPACT, SNAPSHOT, RESET, COMMIT:
  indices, terms and digests, no user data) stays JSON in clear and carries
  `mac`, the HMAC of its canonical JSON; the SEGMENT record also carries
  `enc`, the key id, so that a wrong key (or none, or a key given to a
  plaintext store) is told at once from damage.
- Snapshot files: the metadata stays in clear (with `enc`) and the data is
  `nonce | AES-GCM(data, aad = seq, index, term) | tag`.
The CRCs and the snapshot's SHA-256 stay over the bytes as stored, so torn
writes are still told from damage the same way. Random 96-bit nonces: safe
for 2^32 records per key (NIST SP 800-38D), far more than a show writes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.storage.errors import DiskStorageError

KEY_BYTES = 32
NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
_SNAP_AAD = struct.Struct("<8sQQQ")


class KeyMismatch(DiskStorageError):
    """The store was written with another key, with none, or in clear while
    a key is given: the node did not start and changed nothing."""


class AuthFailed(ValueError):
    """A record or snapshot fails authentication (altered, or damaged)."""


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class RecordCipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"an at-rest key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(_derive(key, b"hana at-rest aead v1"))
        self._mac_key = _derive(key, b"hana at-rest mac v1")
        self.key_id = hashlib.sha256(b"hana-key-id" + key).hexdigest()[:16]

    # -- entries -------------------------------------------------------------------

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes | memoryview, aad: bytes) -> bytes:
        if len(blob) < OVERHEAD:
            raise AuthFailed(f"encrypted data of {len(blob)} bytes is shorter than its nonce and tag")
        b = bytes(blob)
        try:
            return self._aead.decrypt(b[:NONCE], b[NONCE:], aad)
        except InvalidTag:
            raise AuthFailed("fails authentication (altered, or written with another key)") from None

    # -- metadata records ----------------------------------------------------------

    def _mac_of(self, fields: dict[str, Any]) -> str:
        body = orjson.dumps({k: v for k, v in fields.items() if k != "mac"}, option=orjson.OPT_SORT_KEYS)
        return hmac.new(self._mac_key, body, hashlib.sha256).hexdigest()[:32]

    def sign_meta(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "mac": self._mac_of(fields)}

    def check_meta(self, fields: dict[str, Any]) -> None:
        mac = fields.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac_of(fields)):
            raise AuthFailed("record fails authentication (its mac does not match: altered)")

    # -- snapshots -----------------------------------------------------------------

    @staticmethod
    def snapshot_aad(seq: int, index: int, term: int) -> bytes:
        return _SNAP_AAD.pack(b"hanasnap", seq, index, term)


def key_mismatch_reason(found: Any, cipher: RecordCipher | None) -> str | None:
    """Why a store marked `found` (a key id, or None for clear) does not open
    with `cipher`; None if it does."""
    if cipher is None:
        if found is None:
            return None
        return (
            f"the store is encrypted (key id {found}): start with --encrypt-at-rest KEYFILE, the key it was made with"
        )
    if found is None:
        return (
            "the store was written without encryption: --encrypt-at-rest cannot open it "
            "(start without the flag, or start afresh with it and let the node catch up)"
        )
    if found != cipher.key_id:
        return f"the store was written with another key (key id {found}, the given key's is {cipher.key_id})"
    return None
