"""Join tokens: `hana1.<base64url(JSON)>`.

The JSON object: {"cluster", "controllers": ["https://host:port"…] (the API
addresses of machines that sign joins), "ca_sha256" (the fingerprint of the
cluster CA the new machine must find the controller's certificate signed
by), "id", "secret", "expires" (ms since the epoch), "role" ("voter" |
"learner")}. A token is at most 4 KiB; anything else is refused with a
`TokenError` that says what is wrong, before anything is written or sent.

The token's id and the sha256 of its secret go through the log (the
`trust_invite` command); the secret itself never does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

PREFIX = "hana1."
MAX_TOKEN_CHARS = 4096
ROLES = ("voter", "learner")
MAX_CONTROLLERS = 8
_FIELDS = frozenset({"cluster", "controllers", "ca_sha256", "id", "secret", "expires", "role"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{32,128}")
_ADDRESS = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]{1,300}")


class TokenError(ValueError):
    """A join token that cannot be used: the message says why and what to do."""


@dataclass(frozen=True)
class JoinToken:
    cluster: str
    controllers: tuple[str, ...]
    ca_sha256: str
    id: str
    secret: str
    expires: int
    role: str

    def encode(self) -> str:
        doc = {
            "cluster": self.cluster,
            "controllers": list(self.controllers),
            "ca_sha256": self.ca_sha256,
            "id": self.id,
            "secret": self.secret,
            "expires": self.expires,
            "role": self.role,
        }
        body = base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).rstrip(b"=").decode()
        text = PREFIX + body
        if len(text) > MAX_TOKEN_CHARS:
            raise TokenError(f"the token would be {len(text)} characters (limit {MAX_TOKEN_CHARS})")
        return text

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    cluster: str, controllers: list[str], ca_sha256: str, expires_ms: int, role: str = "learner"
) -> JoinToken:
    if role not in ROLES:
        raise TokenError(f"role must be voter or learner, got {role!r}")
    return JoinToken(
        cluster, tuple(controllers), ca_sha256, secrets.token_hex(8), secrets.token_urlsafe(32), expires_ms, role
    )


def decode(text: Any) -> JoinToken:
    """The token in `text`; TokenError for garbage, a truncated token or a
    wrong field. Does not check expiry (see `check_expiry`)."""
    if not isinstance(text, str):
        raise TokenError("a join token is a string starting with hana1.")
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError(f"the join token is longer than {MAX_TOKEN_CHARS} characters: not a token of hana")
    if not text.startswith(PREFIX):
        raise TokenError("not a join token: it must start with hana1. (copy the whole line `hana-node invite` printed)")
    body = text[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenError(
            "the join token is damaged or truncated (copy the whole line `hana-node invite` printed)"
        ) from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise TokenError("the join token is damaged or truncated: its fields are not those of a hana1 token")
    cluster, controllers, fp, tid = doc["cluster"], doc["controllers"], doc["ca_sha256"], doc["id"]
    secret, expires, role = doc["secret"], doc["expires"], doc["role"]
    if not isinstance(cluster, str) or not 0 < len(cluster) <= 64:
        raise TokenError("the join token's cluster is not a cluster name")
    if (
        not isinstance(controllers, list)
        or not 0 < len(controllers) <= MAX_CONTROLLERS
        or not all(isinstance(a, str) and _ADDRESS.fullmatch(a) for a in controllers)
    ):
        raise TokenError("the join token's controller addresses are not http(s)://host:port")
    if not isinstance(fp, str) or not _HEX64.fullmatch(fp):
        raise TokenError("the join token's CA fingerprint is not a sha256 in hex")
    if (
        not isinstance(tid, str)
        or not _ID.fullmatch(tid)
        or not isinstance(secret, str)
        or not _SECRET.fullmatch(secret)
    ):
        raise TokenError("the join token's id or secret is damaged")
    if type(expires) is not int or not 0 < expires < 1 << 62:
        raise TokenError("the join token's expiry is not a time")
    if role not in ROLES:
        raise TokenError("the join token's role is not voter or learner")
    return JoinToken(cluster, tuple(controllers), fp, tid, secret, expires, role)


def check_expiry(token: JoinToken, now_ms: int) -> None:
    if now_ms >= token.expires:
        raise TokenError(
            f"the join token expired {(now_ms - token.expires) // 1000} s ago: ask an admin for a new one "
            "(hana-node invite)"
        )


_DURATION = re.compile(r"([0-9]{1,6})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_EXPIRY_S = 30 * 86400


def parse_duration(text: str) -> int:
    """Seconds in `10m`, `2h`, `90s`, `1d` (at most 30 days); ValueError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected a duration such as 10m, 2h or 1d, got {text!r}")
    seconds = int(m[1]) * _UNIT[m[2]]
    if not 0 < seconds <= MAX_EXPIRY_S:
        raise ValueError(f"a duration from 1s to 30d, got {text!r}")
    return seconds
