"""Bearer tokens with roles.

Tokens file (JSON): {"tokens": [{"name": "ops-laptop", "token": "…", "role": "operator"}]}
Roles are ordered: reader < operator < admin. The token's name is the
identity recorded in the audit trail.

Without a tokens file (a loopback API) a client without a token is an
operator and the node's admin token (`<data-dir>/admin-token`, written at
first start by `mesh.node.credentials.admin_token`) makes it the admin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import orjson

ROLES = ("reader", "operator", "admin")


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


class TokenAuth:
    def __init__(self, tokens: dict[str, Identity]) -> None:
        self._tokens = [(_digest(token), ident) for token, ident in tokens.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuth:
        try:
            doc = orjson.loads(Path(path).read_bytes())
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
        return cls(tokens)

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
