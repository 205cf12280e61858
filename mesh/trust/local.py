"""The credentials of this machine: `hana-node init`, writing a node's
certificate and key, and loading the CA where this machine holds its key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.trust import ca, files


@dataclass(frozen=True)
class Signer:
    """The CA this machine signs with (the newest in ca.pem whose key is ca.key)
    and every CA it trusts."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    bundle: tuple[x509.Certificate, ...]
    cluster: str


def init_cluster(
    data_dir: Path | str,
    cluster: str,
    node_id: str,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    now: dt.datetime | None = None,
    lifetime_s: int = ca.NODE_SECONDS,
) -> files.NodeCredentials:
    """Make a cluster CA and this node's certificate in DATA/tls/. Refuses
    (changing nothing) when DATA/tls/ already holds credentials."""
    ca.check_node_id(node_id)
    ca.check_node_id(cluster)
    d = files.tls_dir(data_dir)
    if d.exists() and any(d.iterdir()):
        raise ca.TrustError(f"{d} already holds credentials: this machine is initialised (move it aside to start over)")
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    files.ensure_tls_dir(data_dir)
    ca_key, ca_cert = ca.make_ca(cluster, now)
    files.write_atomic(d / files.CA_KEY, ca.key_pem(ca_key))
    files.write_atomic(d / files.CA_PEM, ca.cert_pem(ca_cert), 0o644)
    key = ca.new_key()
    cert = ca.issue(ca_key, ca_cert, key.public_key(), cluster, node_id, hosts, now, lifetime_s)
    write_node(data_dir, key, cert)
    creds = files.load_credentials(data_dir)
    assert creds is not None
    return creds


def write_node(data_dir: Path | str, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> None:
    """Write node.pem (and node.key when given: the key first, so that a
    crash between them leaves a key that the old certificate does not match
    only when a new key was being installed)."""
    d = files.ensure_tls_dir(data_dir)
    if key is not None:
        files.write_atomic(d / files.NODE_KEY, ca.key_pem(key))
    files.write_atomic(d / files.NODE_PEM, ca.cert_pem(cert), 0o644)


def write_bundle(data_dir: Path | str, certs: Sequence[x509.Certificate]) -> None:
    d = files.ensure_tls_dir(data_dir)
    files.write_atomic(d / files.CA_PEM, b"".join(ca.cert_pem(c) for c in certs), 0o644)


def bundle(data_dir: Path | str) -> list[x509.Certificate]:
    return files.load_pem_certs(files.tls_dir(data_dir) / files.CA_PEM)


def node_cert(data_dir: Path | str) -> x509.Certificate:
    certs = files.load_pem_certs(files.tls_dir(data_dir) / files.NODE_PEM)
    if not certs:
        raise files.CredentialsError(f"{files.tls_dir(data_dir) / files.NODE_PEM} holds no certificate")
    return certs[0]


def node_key(data_dir: Path | str) -> ec.EllipticCurvePrivateKey:
    return ca.load_key(files.read_bounded(files.tls_dir(data_dir) / files.NODE_KEY))


def signer(data_dir: Path | str) -> Signer | None:
    """The CA key and certificate on this machine, or None when it holds no ca.key."""
    d = files.tls_dir(data_dir)
    if not (d / files.CA_KEY).is_file():
        return None
    key = ca.load_key(files.read_bounded(d / files.CA_KEY))
    certs = bundle(data_dir)
    mine = [c for c in certs if ca.same_key(c, key)]
    if not mine:
        raise files.CredentialsError(f"{d / files.CA_KEY} matches no CA in {d / files.CA_PEM}")
    cluster, _ = files.cert_identity(node_cert(data_dir))
    return Signer(key, mine[-1], tuple(certs), cluster)
