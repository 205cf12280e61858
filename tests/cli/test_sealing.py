"""Sealed (.hana encrypted and authenticated) files and key files (issue 18)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mesh import sealing
from mesh.node.flags import CliError

PLAIN = b'{"format":"hana-save","components":{"parameters":{"parameters/secret":"hunter2"}}}\n'


def key_file(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_round_trip_and_no_plaintext(tmp_path: Path) -> None:
    key = bytes(range(32))
    blob = sealing.seal(PLAIN, key)
    assert b"hunter2" not in blob and sealing.is_sealed(blob)
    assert sealing.unseal(blob, key) == PLAIN
    # Random nonces: the same file sealed twice differs.
    assert sealing.seal(PLAIN, key) != blob


def test_wrong_key_tampered_and_plain_files_are_refused() -> None:
    key, other = bytes(32), bytes([1] * 32)
    blob = sealing.seal(PLAIN, key)
    with pytest.raises(sealing.SealError, match="another key"):
        sealing.unseal(blob, other)
    for pos in (9, sealing.HEAD_SIZE + 3, len(blob) - 1):  # header, body, tag
        bad = bytearray(blob)
        bad[pos] ^= 1
        with pytest.raises(sealing.SealError):
            sealing.unseal(bytes(bad), key)
    bad = bytearray(blob)
    bad[sealing.HEAD_SIZE + 3] ^= 1
    with pytest.raises(sealing.SealError, match="altered"):
        sealing.unseal(bytes(bad), key)
    with pytest.raises(sealing.SealError, match="cut short"):
        sealing.unseal(blob[: sealing.HEAD_SIZE + 4], key)
    with pytest.raises(sealing.SealError, match="not encrypted"):
        sealing.unseal(PLAIN, key)


def test_key_files(tmp_path: Path) -> None:
    key = bytes(range(32))
    assert sealing.load_key(key_file(tmp_path / "raw", key)) == key
    assert sealing.load_key(key_file(tmp_path / "hex", key.hex().encode() + b"\n")) == key
    assert sealing.load_key(key_file(tmp_path / "b64", base64.b64encode(key) + b"\n")) == key
    with pytest.raises(CliError, match="32-byte key"):
        sealing.load_key(key_file(tmp_path / "short", b"too short"))
    with pytest.raises(CliError, match="chmod 600"):
        sealing.load_key(key_file(tmp_path / "open", key, mode=0o644))
