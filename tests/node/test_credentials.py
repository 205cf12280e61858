"""Secrets and tokens on disk (mesh.node.credentials): no built-in secret,
private files only, the admin token and how the CLI finds it.

Findings 3, 16 and 17 of issue 12."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from mesh.cli import build_parser, resolve_token
from mesh.node import credentials
from mesh.node.flags import CliError
from mesh.serve import build


@pytest.fixture(autouse=True)
def private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("HANA_SECRET", raising=False)
    monkeypatch.delenv("HANA_TOKEN", raising=False)
    monkeypatch.delenv("HANA_TOKEN_FILE", raising=False)
    return home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _serve_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--id", "n1", "--no-mdns", "--peers", "n1=127.0.0.1:7071", *extra])


def test_finding_03_no_builtin_secret_off_loopback() -> None:
    """Finding 3: a node with --raft on a real address and no secret used to
    start with the public development secret; now it refuses, naming the fix."""
    with pytest.raises(CliError, match="--secret-file"):
        build(_serve_args("--raft", "192.0.2.10:7071", "--peers", "n1=192.0.2.10:7071"))
    with pytest.raises(CliError, match="not loopback"):
        credentials.cluster_secret(None, raft_is_loopback=False, raft="192.0.2.10:7071")


def test_finding_03_loopback_secret_is_per_user_and_shared(private_config: Path) -> None:
    """Finding 3: on loopback the secret is a per-user file made once (0600),
    so every node one user starts agrees, and it is never a public constant."""
    first, source = credentials.cluster_secret(None, raft_is_loopback=True, raft="127.0.0.1:7071")
    again, _ = credentials.cluster_secret(None, raft_is_loopback=True, raft="127.0.0.1:7072")
    path = private_config / "hana" / "secret"
    assert first == again and len(first) >= 32 and source == f"user:{path}"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert b"development" not in first
    cfg = build(_serve_args("--raft", "127.0.0.1:7071"))[0]
    assert cfg.secret == first


def test_finding_16_secret_and_tokens_files_readable_by_others_are_refused(tmp_path: Path) -> None:
    """Finding 16: secret and tokens files readable by everyone were accepted
    silently; now they are refused with the chmod that fixes it."""
    secret = tmp_path / "secret"
    secret.write_text("s" * 40)
    os.chmod(secret, 0o644)
    with pytest.raises(CliError, match="chmod 600"):
        build(_serve_args("--raft", "127.0.0.1:7071", "--secret-file", str(secret)))
    os.chmod(secret, 0o600)
    assert build(_serve_args("--raft", "127.0.0.1:7071", "--secret-file", str(secret)))[0].secret == b"s" * 40

    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": [{"name": "ops", "token": "ops-token-0123456789", "role": "admin"}]}')
    os.chmod(tokens, 0o640)
    with pytest.raises(CliError, match=r"--tokens-file.*chmod 600"):
        build(_serve_args("--raft", "127.0.0.1:7071", "--tokens-file", str(tokens)))
    os.chmod(tokens, 0o600)
    assert build(_serve_args("--raft", "127.0.0.1:7071", "--tokens-file", str(tokens)))[2] is not None


def test_short_or_odd_secrets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = tmp_path / "short"
    short.write_text("tiny")
    os.chmod(short, 0o600)
    with pytest.raises(CliError, match="fewer than 16"):
        credentials.cluster_secret(str(short), raft_is_loopback=True, raft="127.0.0.1:1")
    with pytest.raises(CliError, match="cannot read"):
        credentials.cluster_secret(str(tmp_path / "missing"), raft_is_loopback=True, raft="127.0.0.1:1")
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (credentials.MAX_CREDENTIAL_FILE + 1))
    os.chmod(huge, 0o600)
    with pytest.raises(CliError, match="larger than"):
        credentials.cluster_secret(str(huge), raft_is_loopback=True, raft="127.0.0.1:1")
    monkeypatch.setenv("HANA_SECRET", "short")
    with pytest.raises(CliError, match="HANA_SECRET"):
        credentials.cluster_secret(None, raft_is_loopback=False, raft="192.0.2.1:1")


def test_admin_token_is_private_stable_and_found_by_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    credentials.private_data_dir(data)
    token = credentials.admin_token(data)
    assert token == credentials.admin_token(data) and len(token) >= 32
    assert _mode(data / "admin-token") == 0o600 and _mode(data) == 0o700
    credentials.remember_api("127.0.0.1:7070", data)
    assert credentials.find_admin_token("127.0.0.1:7070") == token
    # Never lent to another address.
    assert credentials.find_admin_token("127.0.0.1:7071") is None
    args = build_parser().parse_args(["status", "--api", "127.0.0.1:7070"])
    assert resolve_token(args, "127.0.0.1:7070") == (token, True)
    assert resolve_token(args, "127.0.0.1:9999") == (None, True)


def test_data_dir_opened_up_to_others_is_made_private(tmp_path: Path) -> None:
    """Finding 16: data directories were 0755, so the log was world-readable."""
    data = tmp_path / "old"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    assert credentials.private_data_dir(data) is True
    assert _mode(data) == 0o700
    assert credentials.private_data_dir(data) is False


def test_finding_17_token_file_instead_of_a_token_in_ps(tmp_path: Path) -> None:
    """Finding 17: --token shows in ps; --token-file (0600) keeps it out."""
    f = tmp_path / "token"
    f.write_text("ops-token-0123456789\n")
    os.chmod(f, 0o600)
    args = build_parser().parse_args(["get", "displays/a", "--token-file", str(f)])
    assert resolve_token(args, "127.0.0.1:7070") == ("ops-token-0123456789", False)
    os.chmod(f, 0o644)
    with pytest.raises(CliError, match="chmod 600"):
        resolve_token(args, "127.0.0.1:7070")
    f.write_text("two tokens\n")
    os.chmod(f, 0o600)
    with pytest.raises(CliError, match="one token"):
        resolve_token(args, "127.0.0.1:7070")
