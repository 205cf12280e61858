"""A new machine gets its credentials: `serve --join TOKEN` (one request,
with a token) or `serve --request-join URL` (pending until an admin runs
`hana-node members approve ID`, polling meanwhile). The key is made here and
never leaves the machine; on any refusal nothing is written but, for a
pending machine, its key (DATA/pending.key, 0600), so that the key the admin
approved is the key that asks again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.trust import ca, client, files, local, tokens

log = logging.getLogger("mesh.trust")
PENDING_KEY = "pending.key"


def _install(
    data_dir: Path, key: ec.EllipticCurvePrivateKey, doc: dict[str, Any], cluster: str | None, node_id: str
) -> files.NodeCredentials:
    try:
        cert = x509.load_pem_x509_certificate(str(doc.get("cert", "")).encode())
        cas = x509.load_pem_x509_certificates("".join(doc.get("ca") or []).encode())
    except ValueError as exc:
        raise client.JoinError(f"the controller's answer holds no usable certificate ({exc})") from None
    cluster = cluster or str(doc.get("cluster", ""))
    if not ca.same_key(cert, key):
        raise client.JoinError("the controller's certificate is not for this machine's key")
    try:
        got = ca.verify_node_cert(cert, cas, cluster)
    except ca.TrustError as exc:
        raise client.JoinError(f"the controller's certificate is unusable: {exc}") from None
    if got != node_id:
        raise client.JoinError(f"the controller issued a certificate for {got!r}, not {node_id!r}")
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    files.ensure_tls_dir(data_dir)
    local.write_bundle(data_dir, cas)
    local.write_node(data_dir, key, cert)
    peers = doc.get("peers")
    if isinstance(peers, dict):
        files.write_peers(data_dir, {str(k): str(v) for k, v in list(peers.items())[:256] if k != node_id})
    creds = files.load_credentials(data_dir)
    assert creds is not None
    return creds


def join_with_token(
    data_dir: Path, text: str, node_id: str, hosts: Sequence[str], raft: str, api: str
) -> tuple[files.NodeCredentials, str]:
    """Credentials from a join token (and the role it gives). Raises
    TokenError (garbage, truncated, expired: nothing sent) or JoinError."""
    tok = tokens.decode(text)
    tokens.check_expiry(tok, int(time.time() * 1000))
    ca.check_node_id(node_id)
    key = ca.new_key()
    body = {"token": tok.encode(), "node_id": node_id, "csr": ca.csr_pem(ca.make_csr(key, tok.cluster, node_id, hosts))}
    body.update({"raft": raft, "api": api})
    problems = []
    for addr in tok.controllers:
        try:
            pem, _ = client.fetch_bundle(addr, tok.ca_sha256)
            status, doc = client.request(addr, "POST", "/v1/trust/join", body, ca_pem=pem)
            doc = client.raise_for(status, doc, f"join at {addr}")
        except client.JoinError as exc:
            if exc.status is not None and exc.code != "not_signer":
                raise  # a controller of the cluster refused: another would too
            problems.append(str(exc))
            continue
        creds = _install(data_dir, key, doc, tok.cluster, node_id)
        return creds, str(doc.get("role", tok.role))
    raise client.JoinError("no controller in the token answered: " + "; ".join(problems))


def request_join(
    data_dir: Path,
    address: str,
    node_id: str,
    hosts: Sequence[str],
    raft: str,
    api: str,
    stop: Callable[[], bool],
    poll: float = 1.0,
) -> files.NodeCredentials | None:
    """Ask `address` (a node's API, http(s)://host:port) until an admin
    approves this machine; None if `stop()` became true first."""
    ca.check_node_id(node_id)
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    kp = Path(data_dir) / PENDING_KEY
    if kp.is_file():
        key = ca.load_key(files.read_bounded(kp))
    else:
        key = ca.new_key()
        files.write_atomic(kp, ca.key_pem(key))
    fp = ca.key_fingerprint(key.public_key())
    body = {
        "node_id": node_id,
        "csr": ca.csr_pem(ca.make_csr(key, "pending", node_id, hosts)),
        "raft": raft,
        "api": api,
    }
    said = False
    while not stop():
        try:
            status, doc = client.request(address, "POST", "/v1/trust/request", body)
            doc = client.raise_for(status, doc, f"request at {address}")
        except client.JoinError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                raise
            log.warning("node=%s event=join_request_failed error=%r", node_id, str(exc))
        else:
            if status == 200:
                creds = _install(data_dir, key, doc, None, node_id)
                kp.unlink()
                log.info("node=%s event=approved cluster=%s", node_id, creds.cluster)
                return creds
            if not said:
                log.warning(
                    "node=%s event=waiting_for_approval fingerprint=%s action=%r",
                    node_id,
                    fp,
                    f"an admin of the cluster checks this fingerprint and runs: hana-node members approve {node_id}",
                )
                said = True
        deadline = time.monotonic() + poll
        while time.monotonic() < deadline and not stop():
            time.sleep(0.1)
    return None
