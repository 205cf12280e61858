"""Bearer tokens with roles.

Tokens file (JSON): {"tokens": [{"name": "ops-laptop", "token": "…", "role": "operator"}]}
Roles are ordered: reader < operator < admin. The token's name is the
identity recorded in the audit trail.

Without a tokens file (a loopback API) a client without a token is an
operator and the node's admin token (`<data-dir>/admin-token`, written at
first start by `mesh.node.credentials.admin_token`) makes it the admin.

A tokens file is reloaded while the node runs (issue 18): `reload_if_changed`
(polled by `mesh.api.tokens_reload`, which also reloads on SIGHUP) rereads
it when its mtime, size or inode changed. A file that no longer parses, or
that others may read, keeps the previous tokens and logs what is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

ROLES = ("reader", "operator", "admin")
MAX_TOKENS_FILE = 1 << 20

log = logging.getLogger("mesh.api")


class TokensFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str

    def allows(self, needed: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)


# A loopback API without a tokens file: no token reads and writes; the admin
# token is needed for admin actions.
ANONYMOUS_OPERATOR = Identity("anonymous", "operator")
ADMIN = Identity("admin", "admin")


def parse_bearer(header: str) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme in any case, as
    RFC 9110 says); None for any other scheme or an empty token."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def same_token(presented: str, expected: str) -> bool:
    """Constant-time in the tokens' contents and lengths."""
    return hmac.compare_digest(_digest(presented), _digest(expected))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TokenAuth:
    def __init__(self, tokens: dict[str, Identity], path: Path | None = None) -> None:
        self._tokens = [(_digest(token), ident) for token, ident in tokens.items()]
        self.path = path
        self._stamp = _stamp(path) if path is not None else None
        self.reloads = 0  # successful reloads
        self.reload_errors = 0  # files refused (the previous tokens kept)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuth:
        p = Path(path)
        stamp = _stamp(p)
        auth = cls(cls._parse(p), p)
        auth._stamp = stamp
        return auth

    def reload_if_changed(self, force: bool = False) -> bool | None:
        """Reread the tokens file if it changed (or `force`): True when the
        new tokens are in force, False when the file was refused (the old
        tokens stay; logged), None when nothing changed."""
        if self.path is None:
            return None
        stamp = _stamp(self.path)
        if not force and stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            try:
                st = os.stat(self.path)
            except OSError as exc:
                raise TokensFileError(f"cannot read tokens file {self.path}: {exc}") from exc
            if st.st_mode & 0o077:
                raise TokensFileError(
                    f"tokens file {self.path} may be read by others (mode {st.st_mode & 0o777:o}): chmod 600 it"
                )
            tokens = self._parse(self.path)
        except TokensFileError as exc:
            self.reload_errors += 1
            log.warning(
                'event=tokens_reload_refused path=%s error="%s" action="kept the previous %d tokens; fix the file"',
                self.path,
                str(exc).replace('"', "'"),
                len(self._tokens),
            )
            return False
        self._tokens = [(_digest(token), ident) for token, ident in tokens.items()]
        self.reloads += 1
        log.info("event=tokens_reloaded path=%s tokens=%d", self.path, len(tokens))
        return True

    @staticmethod
    def _parse(path: Path) -> dict[str, Identity]:
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_TOKENS_FILE + 1)
            if len(raw) > MAX_TOKENS_FILE:
                raise TokensFileError(f"tokens file {path} is larger than {MAX_TOKENS_FILE} bytes")
            doc = orjson.loads(raw)
        except OSError as exc:
            raise TokensFileError(f"cannot read tokens file {path}: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise TokensFileError(f"tokens file {path} is not JSON: {exc}") from exc
        entries = doc.get("tokens") if isinstance(doc, dict) else None
        if not isinstance(entries, list) or not entries:
            raise TokensFileError(f"tokens file {path}: expected {{'tokens': [...]}} with at least one token")
        tokens: dict[str, Identity] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise TokensFileError(f"tokens file {path}: tokens[{i}] is not an object")
            name, token, role = e.get("name"), e.get("token"), e.get("role")
            if not isinstance(name, str) or not name:
                raise TokensFileError(f"tokens file {path}: tokens[{i}].name must be a non-empty string")
            if not isinstance(token, str) or len(token) < 16:
                raise TokensFileError(f"tokens file {path}: tokens[{i}].token must be at least 16 characters")
            if role not in ROLES:
                raise TokensFileError(f"tokens file {path}: tokens[{i}].role must be one of {', '.join(ROLES)}")
            if token in tokens:
                raise TokensFileError(f"tokens file {path}: tokens[{i}] repeats a token")
            tokens[token] = Identity(name, role)
        return tokens

    def identify(self, header: str | None) -> Identity | None:
        presented = parse_bearer(header) if header else None
        if presented is None:
            return None
        digest = _digest(presented)
        found = None
        for token, ident in self._tokens:  # every token compared: no early exit
            if hmac.compare_digest(token, digest):
                found = ident
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
