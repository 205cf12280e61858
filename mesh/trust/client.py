"""The HTTP side of a machine that asks for a certificate: `serve --join
TOKEN`, `serve --request-join HOST:PORT` (pending until an admin approves)
and renewal. Plain `urllib` (a few requests at start or every few hours):
no aiohttp below the composition root.

Before a join token's secret is sent, the controller is checked: the CA
bundle it serves (GET /v1/trust/ca) must hold the CA whose sha256 the token
carries, and for an https:// controller the TLS connection is then verified
against that CA (its certificate must be signed by it and name the address).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from cryptography import x509

from mesh.trust import ca

MAX_RESPONSE = 256 * 1024


class JoinError(Exception):
    """A join, request or renewal that failed: the message says why and what to do."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _context(cafile_pem: bytes | None, address: str) -> ssl.SSLContext | None:
    if not address.startswith("https://"):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile_pem is None:
        # Only to read the public CA bundle, which is then checked against the token.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=cafile_pem.decode())
    return ctx


def request(
    address: str, method: str, path: str, body: Any = None, ca_pem: bytes | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """(status, JSON document) of one request to `address` (http(s)://host:port)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(address.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_context(ca_pem, address)) as resp:
            status, raw = resp.status, resp.read(MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_RESPONSE + 1)
    except ssl.SSLCertVerificationError as exc:
        raise JoinError(
            f"{address}: its TLS certificate is not signed by the cluster CA in the token ({exc})"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise JoinError(f"{address} is unreachable ({getattr(exc, 'reason', exc)})") from None
    if len(raw) > MAX_RESPONSE:
        raise JoinError(f"{address}{path}: the answer is larger than {MAX_RESPONSE} bytes")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise JoinError(f"{address}{path}: the answer is not JSON (is this a hana node's API?)") from None
    if not isinstance(doc, dict):
        raise JoinError(f"{address}{path}: the answer is not a JSON object")
    return status, doc


def raise_for(status: int, doc: dict[str, Any], what: str) -> dict[str, Any]:
    if 200 <= status < 300:
        return doc
    raw = doc.get("error")
    err: dict[str, Any] = raw if isinstance(raw, dict) else {}
    raise JoinError(f"{what}: {err.get('message', status)}", status, err.get("code"))


def fetch_bundle(address: str, ca_sha256: str | None) -> tuple[bytes, list[x509.Certificate]]:
    """The cluster's CA bundle from `address`; with `ca_sha256` it must hold that CA."""
    status, doc = request(address, "GET", "/v1/trust/ca")
    doc = raise_for(status, doc, f"{address}: the cluster CA")
    certs_pem = doc.get("certs")
    if not isinstance(certs_pem, list) or not certs_pem or not all(isinstance(c, str) for c in certs_pem):
        raise JoinError(f"{address}: the cluster CA answer holds no certificates")
    pem = "".join(certs_pem).encode()
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise JoinError(f"{address}: the cluster CA is not PEM ({exc})") from None
    if ca_sha256 is not None and ca_sha256 not in {ca.fingerprint(c) for c in certs}:
        raise JoinError(
            f"{address} does not hold the cluster CA named in the token (sha256 {ca_sha256[:16]}…): "
            "it is another cluster's node, or someone in between; nothing was sent"
        )
    return pem, certs
