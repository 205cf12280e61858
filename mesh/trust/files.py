"""The credential files in a node's data dir, as INTERFACES3.md fixes them.

    DATA/tls/          0700
        ca.pem         the trusted cluster CA certificates (one, two during a CA roll)
        ca.key         the CA's private key, only on a machine that signs (0600)
        node.pem       this node's certificate (URI SAN hana://<cluster>/<node id>)
        node.key       this node's private key (0600), never leaves the machine

`load_credentials` is what the transport (T2) reads; `credentials_changed`
tells it when to rebuild its SSLContext (a renewal or a CA roll rewrites
the files in place, atomically, while the node runs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

TLS_DIR = "tls"
CA_PEM = "ca.pem"
CA_KEY = "ca.key"
NODE_PEM = "node.pem"
NODE_KEY = "node.key"
PEERS = "peers.json"
URI_SCHEME = "hana://"
log = logging.getLogger("mesh.trust")
# A PEM file of ours is a few KiB; refuse anything far larger while reading it.
MAX_PEM_BYTES = 256 * 1024


class CredentialsError(ValueError):
    """The credential files are missing, unreadable or inconsistent: the
    message says which file and what to do."""


@dataclass(frozen=True)
class NodeCredentials:
    ca_bundle: Path
    cert: Path
    key: Path
    node_id: str
    cluster: str


def tls_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / TLS_DIR


def parse_node_uri(uri: str) -> tuple[str, str]:
    """(cluster, node id) from `hana://<cluster>/<node id>`; ValueError otherwise."""
    if not uri.startswith(URI_SCHEME):
        raise ValueError(f"not a hana node URI: {uri[:80]!r}")
    cluster, sep, node_id = uri[len(URI_SCHEME) :].partition("/")
    if not sep or not cluster or not node_id or "/" in node_id:
        raise ValueError(f"a hana node URI is hana://<cluster>/<node id>, got {uri[:80]!r}")
    return cluster, node_id


def node_uri(cluster: str, node_id: str) -> str:
    return f"{URI_SCHEME}{cluster}/{node_id}"


def cert_identity(cert: x509.Certificate) -> tuple[str, str]:
    """(cluster, node id) from the certificate's one hana:// URI SAN; ValueError if none or several."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no subjectAltName (no hana:// node URI SAN)") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URI_SCHEME)]
    if len(uris) != 1:
        raise ValueError(f"the certificate must carry exactly one hana:// node URI SAN, it has {len(uris)}")
    return parse_node_uri(uris[0])


def cert_node_id(cert: x509.Certificate) -> str:
    """The node id in the certificate's URI SAN `hana://<cluster>/<id>`; raises ValueError."""
    return cert_identity(cert)[1]


def read_bounded(path: Path, limit: int = MAX_PEM_BYTES) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CredentialsError(f"{path} is larger than {limit} bytes: not a credential file of hana")
    return data


def load_pem_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(read_bounded(path))
    except ValueError as exc:
        raise CredentialsError(f"{path}: not a PEM certificate file ({exc})") from None
    return certs


def load_credentials(data_dir: Path | str) -> NodeCredentials | None:
    """The node's credentials, or None when `DATA/tls/` does not exist (PSK
    mode). A `tls/` dir with a file missing or a certificate without a hana
    URI SAN raises CredentialsError. Records the files' mtimes for
    `credentials_changed`."""
    d = tls_dir(data_dir)
    if not d.is_dir():
        return None
    paths = {name: d / name for name in (CA_PEM, NODE_PEM, NODE_KEY)}
    for p in paths.values():
        if not p.is_file():
            raise CredentialsError(
                f"{p} is missing: {d} must hold {CA_PEM}, {NODE_PEM} and {NODE_KEY} "
                "(made by `hana-node init` or `serve --join TOKEN`); move the tls dir aside for PSK mode"
            )
    certs = load_pem_certs(paths[NODE_PEM])
    if not certs:
        raise CredentialsError(f"{paths[NODE_PEM]} holds no certificate")
    try:
        cluster, node_id = cert_identity(certs[0])
    except ValueError as exc:
        raise CredentialsError(f"{paths[NODE_PEM]}: {exc}") from None
    _STAMPS[str(Path(data_dir).resolve())] = _stamp(d)
    return NodeCredentials(paths[CA_PEM], paths[NODE_PEM], paths[NODE_KEY], node_id, cluster)


_STAMPS: dict[str, tuple[int, ...]] = {}


def _stamp(d: Path) -> tuple[int, ...]:
    out: list[int] = []
    for name in (CA_PEM, NODE_PEM, NODE_KEY):
        try:
            st = os.stat(d / name)
            out += [st.st_mtime_ns, st.st_ino, st.st_size]
        except FileNotFoundError:
            out += [0, 0, 0]
    return tuple(out)


def credentials_changed(data_dir: Path | str) -> bool:
    """True once after ca.pem, node.pem or node.key changed (mtime, inode or
    size) since the last `load_credentials` or `credentials_changed` call for
    this data dir; the first call without a previous one records and answers False."""
    key = str(Path(data_dir).resolve())
    now = _stamp(tls_dir(data_dir))
    before = _STAMPS.get(key)
    _STAMPS[key] = now
    return before is not None and before != now


def ensure_tls_dir(data_dir: Path | str) -> Path:
    d = tls_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temporary file, fsync, rename: a
    reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def known_peers(data_dir: Path | str) -> dict[str, tuple[str, int]]:
    """The members' raft addresses last written to DATA/tls/peers.json (by a
    join, then kept in step by the trust loop): where a joined node dials its
    peers without --peers or mDNS. A damaged file counts as empty (logged)."""
    path = tls_dir(data_dir) / PEERS
    if not path.is_file():
        return {}
    try:
        doc = json.loads(read_bounded(path, 64 * 1024))
        out = {}
        for nid, addr in dict(doc).items():
            host, _, port = str(addr).rpartition(":")
            out[str(nid)] = (host.strip("[]"), int(port))
        return out
    except (ValueError, TypeError, CredentialsError) as exc:
        log.warning(
            "event=peers_file_unreadable path=%s error=%r action=%r", path, str(exc), "it is rewritten by the node"
        )
        return {}


def write_peers(data_dir: Path | str, peers: dict[str, str]) -> bool:
    """Write DATA/tls/peers.json if it changed; True if written."""
    path = tls_dir(data_dir) / PEERS
    data = json.dumps(dict(sorted(peers.items()))).encode()
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return False
    write_atomic(path, data)
    return True
