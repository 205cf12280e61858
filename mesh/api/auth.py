"""Bearer tokens with roles, for an API bound beyond loopback.

Tokens file (JSON): {"tokens": [{"name": "ops-laptop", "token": "…", "role": "operator"}]}
Roles are ordered: reader < operator < admin. The token's name is the
identity recorded in the audit trail.
"""

from __future__ import annotations

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


ANONYMOUS_ADMIN = Identity("anonymous", "admin")


class TokenAuth:
    def __init__(self, tokens: dict[str, Identity]) -> None:
        self._tokens = tokens

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
        if not header or not header.startswith("Bearer "):
            return None
        presented = header[len("Bearer ") :].strip()
        for token, ident in self._tokens.items():
            if hmac.compare_digest(token.encode(), presented.encode()):
                return ident
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
