"""TLS for peer links and the API: contexts from the node's credential files.

The files are those of INTERFACES3.md, in the node's data dir:

    tls/ca.pem    the trusted cluster CA certificates (two during a CA roll)
    tls/node.pem  this node's certificate, URI SAN hana://<cluster>/<node id>
    tls/node.key  its private key

Peer links are TLS 1.3 only, both ways authenticated: the listener requires a
client certificate, and both sides verify the other's chain against ca.pem.
Host names are not checked: a peer is a node id, not a host, so the id in
the certificate's URI SAN is what must match (the id the dialer claims in
its hello, the id the listener was dialed for), and the node then asks
`peer_allowed(node_id, serial)` (a member, not revoked).

`PeerTls` rebuilds its contexts when one of the three files changes
(renewal, CA roll): each new connection takes the current context, and the
links already up keep theirs, so a renewal drops nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.transport.codec import FrameError

log = logging.getLogger("mesh.transport")

TLS_DIR = "tls"
CA_PEM = "ca.pem"
CA_KEY = "ca.key"
NODE_PEM = "node.pem"
NODE_KEY = "node.key"
URI_SCHEME = "hana://"

TLS_ADVICE = (
    "every node needs tls/ca.pem, tls/node.pem and tls/node.key in its data dir, from this cluster's CA "
    "(hana-node init on the first machine, hana-node invite + serve --join TOKEN on the others); a "
    "certificate past its end date must be renewed, a machine of another cluster is refused"
)


class PeerRefused(FrameError):
    """A peer's TLS handshake or identity is not acceptable: `code` names why
    (tls_failed, no_certificate, bad_certificate, cert_wrong_cluster,
    cert_mismatch, not_admitted)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# The codes of PeerRefused: a certificate problem an operator fixes.
TLS_FAILURES = frozenset(
    {"tls_failed", "no_certificate", "bad_certificate", "cert_wrong_cluster", "cert_mismatch", "not_admitted"}
)


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    cluster: str
    node_id: str
    serial: int
    fingerprint: str  # sha256 of the DER certificate, hex


def frame_secret(cluster: str) -> bytes:
    """The HMAC key of the frames inside a TLS link: TLS authenticates and
    encrypts the link, the frames keep their format and checks (sequence,
    connection context), so this key is no secret."""
    return hashlib.sha256(b"hana-mesh frames inside TLS\0" + cluster.encode()).digest()


API_HTTPS_MARKER = "api.https"


def tls_paths(data_dir: Path | str) -> tuple[Path, Path, Path]:
    d = Path(data_dir) / TLS_DIR
    return d / CA_PEM, d / NODE_PEM, d / NODE_KEY


def has_credentials(data_dir: Path | str) -> bool:
    """True when the data dir holds a node certificate (TLS mode)."""
    return all(p.exists() for p in tls_paths(data_dir))


def parse_node_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith(URI_SCHEME):
        raise ValueError(f"not a hana node URI: {uri[:80]!r}")
    cluster, sep, node_id = uri[len(URI_SCHEME) :].partition("/")
    if not sep or not cluster or not node_id or "/" in node_id:
        raise ValueError(f"a hana node URI is hana://<cluster>/<node id>, got {uri[:80]!r}")
    return cluster, node_id


def identity_of(der: bytes) -> PeerIdentity:
    """The cluster and node id of a DER certificate's one hana:// URI SAN."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no subjectAltName (no hana:// node URI)") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URI_SCHEME)]
    if len(uris) != 1:
        raise ValueError(f"the certificate must carry exactly one hana:// URI SAN, it has {len(uris)}")
    cluster, node_id = parse_node_uri(uris[0])
    return PeerIdentity(cluster, node_id, cert.serial_number, hashlib.sha256(der).hexdigest())


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerIdentity:
    if ssl_object is None:
        raise PeerRefused("tls_failed", "the connection is not TLS")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerRefused("no_certificate", "the peer presented no certificate")
    try:
        return identity_of(der)
    except ValueError as exc:
        raise PeerRefused("bad_certificate", str(exc)) from None


def _base_context(purpose: ssl.Purpose, ca: Path, cert: Path, key: Path, tls13_only: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=str(ca))
    if tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class PeerTls:
    """The peer-link TLS contexts of one node, rebuilt when its files change."""

    def __init__(
        self,
        data_dir: Path | str,
        cluster: str,
        node_id: str,
        peer_allowed: Callable[[str, int], bool] | None = None,
        note_pending: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.ca, self.cert, self.key = tls_paths(data_dir)
        self.cluster = cluster
        self.node_id = node_id
        self.peer_allowed = peer_allowed or (lambda node_id, serial: True)
        self.note_pending = note_pending or (lambda node_id, address, fingerprint: None)
        self._stamp: tuple[tuple[int, int], ...] = ()
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        self.reloads = 0
        self._load()
        own = identity_of(ssl.PEM_cert_to_DER_cert(self.cert.read_text()))
        if own.node_id != node_id or own.cluster != cluster:
            raise ValueError(
                f"{self.cert} is the certificate of hana://{own.cluster}/{own.node_id}, "
                f"this node is hana://{cluster}/{node_id}: give the matching --node-id and --cluster"
            )

    def _files_stamp(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in (self.ca, self.cert, self.key):
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_ino))
        return tuple(out)

    def _load(self) -> None:
        stamp = self._files_stamp()
        server = _base_context(ssl.Purpose.CLIENT_AUTH, self.ca, self.cert, self.key, tls13_only=True)
        server.verify_mode = ssl.CERT_REQUIRED
        client = _base_context(ssl.Purpose.SERVER_AUTH, self.ca, self.cert, self.key, tls13_only=True)
        # The id in the certificate is checked instead of a host name.
        client.check_hostname = False
        client.verify_mode = ssl.CERT_REQUIRED
        self._server, self._client, self._stamp = server, client, stamp

    def _fresh(self) -> None:
        """Rebuild the contexts if a credential file changed (a renewal or a
        CA roll); on a half-written or broken set keep the old contexts and
        say so (the writer replaces files atomically; the next connection
        tries again)."""
        try:
            stamp = self._files_stamp()
        except OSError as exc:
            log.warning("node=%s event=tls_reload_failed error=%r action=%r", self.node_id, str(exc), TLS_ADVICE)
            return
        if stamp == self._stamp:
            return
        try:
            self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._stamp = stamp  # once per change, not once per connection
            log.error(
                "node=%s event=tls_reload_failed error=%r action=%r",
                self.node_id,
                str(exc),
                "the credential files changed but do not load; the node keeps its previous certificate: " + TLS_ADVICE,
            )
            return
        self.reloads += 1
        log.info("node=%s event=tls_credentials_reloaded", self.node_id)

    def server_context(self) -> ssl.SSLContext:
        self._fresh()
        assert self._server is not None
        return self._server

    def client_context(self) -> ssl.SSLContext:
        self._fresh()
        assert self._client is not None
        return self._client

    def check(self, ssl_object: ssl.SSLObject | None, expected_id: str, address: str) -> PeerIdentity:
        """The peer behind `ssl_object` must be `expected_id` of this
        cluster and admitted; raises PeerRefused saying why not."""
        ident = peer_identity(ssl_object)
        if ident.cluster != self.cluster:
            raise PeerRefused(
                "cert_wrong_cluster", f"certificate of cluster {ident.cluster!r}, this node is of {self.cluster!r}"
            )
        if ident.node_id != expected_id:
            raise PeerRefused(
                "cert_mismatch",
                f"certificate of {ident.node_id!r} on a connection that claims to be {expected_id!r}",
            )
        if not self.peer_allowed(ident.node_id, ident.serial):
            with contextlib.suppress(Exception):
                self.note_pending(ident.node_id, address, ident.fingerprint)
            raise PeerRefused(
                "not_admitted",
                f"{ident.node_id} (serial {ident.serial:x}) is not an admitted member or its certificate is "
                "revoked: approve it (hana-node members approve ID) if it should join",
            )
        return ident


def api_server_context(data_dir: Path | str) -> ssl.SSLContext:
    """HTTPS with the node certificate (TLS 1.2+, browsers included)."""
    ca, cert, key = tls_paths(data_dir)
    return _base_context(ssl.Purpose.CLIENT_AUTH, ca, cert, key, tls13_only=False)


class ApiTls:
    """The API's HTTPS context, rebuilt when the credential files change
    (renewal, CA roll): `context()` is asked at each new connection."""

    def __init__(self, data_dir: Path | str) -> None:
        self.paths = tls_paths(data_dir)
        self._stamp = self._files_stamp()
        self._context = api_server_context(data_dir)
        self._data_dir = data_dir

    def _files_stamp(self) -> tuple[tuple[int, int], ...]:
        return tuple((p.stat().st_mtime_ns, p.stat().st_ino) for p in self.paths)

    def context(self) -> ssl.SSLContext:
        try:
            stamp = self._files_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self._context = api_server_context(self._data_dir)
                log.info("event=api_tls_credentials_reloaded")
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error(
                "event=tls_reload_failed error=%r action=%r",
                str(exc),
                "the API keeps its previous certificate: " + TLS_ADVICE,
            )
        return self._context


def client_context(ca_file: Path | str) -> ssl.SSLContext:
    """A client's context verifying a node's API certificate against the
    cluster CA bundle (the host name or IP must be in the certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def describe_ssl_error(exc: BaseException) -> str:
    """One phrase an operator understands for a failed handshake."""
    text = str(exc)
    reason = getattr(exc, "reason", None) or ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {getattr(exc, 'verify_message', '') or text}"
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"):
        return f"the other side does not speak TLS ({reason})"
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
        return f"no client certificate ({reason})"
    if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION"):
        return f"TLS version below 1.3 ({reason})"
    return text or type(exc).__name__


# -- credentials for loopback test clusters, demos and benches ------------------


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class DevCa:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, cluster: str, days: float = 30.0) -> DevCa:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hana cluster CA {cluster}")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        cluster: str,
        node_id: str,
        hosts: Iterable[str] = ("127.0.0.1", "localhost"),
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for node `node_id`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"{URI_SCHEME}{cluster}/{node_id}")]
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after or now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def write_node(self, data_dir: Path | str, cluster: str, node_id: str, **kwargs: object) -> None:
        """The INTERFACES3.md layout in `data_dir`/tls (0700, keys 0600)."""
        cert, key = self.issue(cluster, node_id, **kwargs)  # type: ignore[arg-type]
        d = Path(data_dir) / TLS_DIR
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        _write_private(d / NODE_KEY, key)
        _write_private(d / NODE_PEM, cert)
        _write_private(d / CA_PEM, self.pem())


def write_loopback_credentials(data_dirs: dict[str, Path], cluster: str) -> Path:
    """A fresh CA and one certificate per node (127.0.0.1, localhost) for a
    loopback test cluster, demo or bench; returns the CA bundle of the first
    node's dir (what a client passes as --ca)."""
    ca = DevCa.make(cluster)
    first: Path | None = None
    for node_id, data_dir in data_dirs.items():
        ca.write_node(data_dir, cluster, node_id)
        if first is None:
            first = Path(data_dir) / TLS_DIR / CA_PEM
    assert first is not None
    return first
