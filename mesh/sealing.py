"""Encrypted and authenticated `.hana` save files, and the at-rest key
file (issue 18).

A sealed save file is::

    b"HANASEAL" | u8 version (1) | 8-byte key id | 12-byte random nonce |
    AES-256-GCM(key, nonce, plaintext .hana file, aad = everything before)

AES-GCM's tag authenticates the whole file (header included): a file
altered anywhere, or opened with another key, does not decrypt. The key id
(the first 8 bytes of SHA-256("hana-key-id" + key)) tells the two apart, so
the error says which. A key file holds 32 bytes: raw, or as 64 hex digits,
or as base64; it must be private (mode 0600), as the cluster secret is.
Make one with `head -c 32 /dev/urandom > save.key && chmod 600 save.key`.
Encryption and decryption happen in the CLI: the node stores and serves the
plain save (the API is the place for TLS), the file on disk is sealed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from pathlib import Path

from mesh.node.credentials import check_private
from mesh.node.flags import CliError

MAGIC = b"HANASEAL"
VERSION = 1
_HEAD = struct.Struct("<8sB8s12s")
HEAD_SIZE = _HEAD.size  # 29
KEY_BYTES = 32
MAX_KEY_FILE = 4096


class SealError(ValueError):
    """A sealed file that cannot be opened: says why and what to do."""


def load_key(path: str | Path, what: str = "--key") -> bytes:
    """The 32-byte key in a private key file; CliError with what is wrong."""
    p = Path(path)
    check_private(p, what)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise CliError(f"{what}: cannot read {p}: {exc.strerror or exc}") from None
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == KEY_BYTES:
        return key
    raise CliError(
        f"{what}: {p} does not hold a 32-byte key (raw, 64 hex digits or base64); make one with "
        f"`head -c 32 /dev/urandom > {p.name} && chmod 600 {p.name}`"
    )


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"hana-key-id" + key).digest()[:8]


def is_sealed(blob: bytes) -> bool:
    return blob[: len(MAGIC)] == MAGIC


def seal(plain: bytes, key: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    head = _HEAD.pack(MAGIC, VERSION, key_id(key), os.urandom(12))
    return head + AESGCM(key).encrypt(head[-12:], plain, head)


def unseal(blob: bytes, key: bytes) -> bytes:
    """The plaintext of a sealed file; SealError if it is not one, was
    sealed with another key, or was altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not is_sealed(blob):
        raise SealError("the file is not encrypted (no HANASEAL header): refusing it with --key")
    if len(blob) < HEAD_SIZE + 16:
        raise SealError("the encrypted file is cut short")
    _, version, kid, nonce = _HEAD.unpack_from(blob)
    if version != VERSION:
        raise SealError(f"encrypted file version {version} is not one this hana-node reads ({VERSION})")
    if kid != key_id(key):
        raise SealError(
            f"the file was encrypted with another key (key id {kid.hex()}, this key's is {key_id(key).hex()})"
        )
    try:
        return AESGCM(key).decrypt(nonce, blob[HEAD_SIZE:], blob[:HEAD_SIZE])
    except InvalidTag:
        raise SealError("the file fails authentication: it was altered or damaged after it was written") from None
