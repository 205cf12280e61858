"""The tokens file reloaded on change (issue 18): new tokens take effect, a
bad or world-readable file keeps the previous ones and says why."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson
import pytest

from mesh.api.auth import TokenAuth

A = "token-a-0123456789abcdef"
B = "token-b-0123456789abcdef"


def write(path: Path, *tokens: tuple[str, str, str], mode: int = 0o600, raw: bytes | None = None) -> None:
    doc = {"tokens": [{"name": n, "token": t, "role": r} for n, t, r in tokens]}
    path.write_bytes(raw if raw is not None else orjson.dumps(doc))
    path.chmod(mode)
    # A new mtime even on a coarse clock.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_a_changed_file_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    write(path, ("ops", A, "admin"))
    auth = TokenAuth.from_file(path)
    assert auth.identify(f"Bearer {A}") is not None
    assert auth.reload_if_changed() is None  # unchanged
    write(path, ("ops2", B, "reader"))
    assert auth.reload_if_changed() is True
    assert auth.identify(f"Bearer {A}") is None
    who = auth.identify(f"Bearer {B}")
    assert who is not None and (who.name, who.role) == ("ops2", "reader")


@pytest.mark.parametrize(
    ("raw", "mode", "says"),
    [
        (b"{not json", 0o600, "not JSON"),
        (b'{"tokens": []}', 0o600, "at least one token"),
        (None, 0o644, "chmod 600"),
    ],
)
def test_a_bad_new_file_keeps_the_old_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: bytes | None, mode: int, says: str
) -> None:
    path = tmp_path / "tokens.json"
    write(path, ("ops", A, "admin"))
    auth = TokenAuth.from_file(path)
    write(path, ("ops2", B, "admin"), mode=mode, raw=raw)
    with caplog.at_level(logging.WARNING, logger="mesh.api"):
        assert auth.reload_if_changed() is False
    assert auth.identify(f"Bearer {A}") is not None
    assert auth.identify(f"Bearer {B}") is None
    assert any("event=tokens_reload_refused" in r.getMessage() and says in r.getMessage() for r in caplog.records)
    # Fixed: taken.
    write(path, ("ops2", B, "admin"))
    assert auth.reload_if_changed() is True
    assert auth.identify(f"Bearer {B}") is not None


def test_a_missing_file_keeps_the_old_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    write(path, ("ops", A, "admin"))
    auth = TokenAuth.from_file(path)
    path.unlink()
    assert auth.reload_if_changed() is False
    assert auth.identify(f"Bearer {A}") is not None
