"""The cluster CA and node certificates (the `cryptography` package).

Keys are EC P-256 (ECDSA with SHA-256): what every OpenSSL build behind
Python's ssl accepts for TLS 1.3 server and client authentication. A node
certificate carries its identity in a URI SAN `hana://<cluster>/<node id>`
(also its CN), the IPs and DNS names of its --raft and --api hosts, and
ExtendedKeyUsage serverAuth+clientAuth. Time is passed in (`now`), so the
functions here are deterministic apart from key generation and serials.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.trust import files

CA_DAYS = 3650
NODE_SECONDS = 90 * 86_400
# Certificates are valid from a little before they are made: clocks differ.
BACKDATE = dt.timedelta(minutes=5)
MAX_CSR_BYTES = 16 * 1024
MAX_HOSTS = 16


class TrustError(ValueError):
    """A certificate, CSR or key that is refused: the message says why."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TrustError("the key is not an EC key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_fingerprint(public_key: ec.EllipticCurvePublicKey | x509.Certificate) -> str:
    """sha256 of the DER SubjectPublicKeyInfo (of a key, or of a certificate's
    key), lowercase hex: what a pending machine is approved by. The same for
    every certificate or CSR of one key."""
    pub = public_key.public_key() if isinstance(public_key, x509.Certificate) else public_key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the DER certificate, lowercase hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    cluster: str, now: dt.datetime | None = None, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed cluster CA. Each gets its own name (cluster plus a
    random suffix): during a roll the old and the new CA are told apart."""
    now = now or utcnow()
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hana mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"hana cluster CA {cluster} {secrets.token_hex(4)}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san(cluster: str, node_id: str, hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(files.node_uri(cluster, node_id))]
    seen: set[str] = set()
    for h in hosts:
        h = h.strip("[]")
        if not h or h in seen or h in ("0.0.0.0", "::"):
            continue
        seen.add(h)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def check_node_id(node_id: str) -> None:
    if not node_id or len(node_id) > 64 or not all(c.isalnum() or c in "._-" for c in node_id):
        raise TrustError(f"node id {node_id[:80]!r}: 1 to 64 letters, digits, '.', '_' or '-'")


def make_csr(
    key: ec.EllipticCurvePrivateKey, cluster: str, node_id: str, hosts: Sequence[str]
) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .add_extension(_san(cluster, node_id, hosts), critical=False)
        .sign(key, hashes.SHA256())
    )


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    if len(data) > MAX_CSR_BYTES:
        raise TrustError(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise TrustError(f"not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise TrustError("the CSR's signature does not match its key")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise TrustError("the CSR's key is not an EC key")
    return csr


def csr_hosts(csr: x509.CertificateSigningRequest) -> list[str]:
    """The IPs and DNS names the CSR asks for (its URI is ignored: the signer sets it)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    out += list(san.get_values_for_type(x509.DNSName))
    if len(out) > MAX_HOSTS:
        raise TrustError(f"the CSR asks for {len(out)} addresses; at most {MAX_HOSTS}")
    return out


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    cluster: str,
    node_id: str,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    lifetime_s: int = NODE_SECONDS,
    serial: int | None = None,
) -> x509.Certificate:
    """A node certificate for `node_id`, signed by the CA."""
    check_node_id(node_id)
    now = now or utcnow()
    not_after = min(now + dt.timedelta(seconds=lifetime_s), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"hana mesh {cluster}"),
                    x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(_san(cluster, node_id, hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether `cert` certifies `key`'s public key."""
    pub = cert.public_key()
    return isinstance(pub, ec.EllipticCurvePublicKey) and pub.public_numbers() == key.public_key().public_numbers()


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_node_cert(
    cert: x509.Certificate, cas: Sequence[x509.Certificate], cluster: str, now: dt.datetime | None = None
) -> str:
    """The node id of `cert` if it is signed by one of `cas`, valid at
    `now` and names `cluster`; TrustError saying why not otherwise."""
    now = now or utcnow()
    if not any(signed_by(cert, ca) for ca in cas):
        raise TrustError("the certificate is not signed by this cluster's CA (another cluster's, or forged)")
    if now < cert.not_valid_before_utc:
        raise TrustError(f"the certificate is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise TrustError(f"the certificate expired at {cert.not_valid_after_utc.isoformat()}")
    try:
        got_cluster, node_id = files.cert_identity(cert)
    except ValueError as exc:
        raise TrustError(str(exc)) from None
    if got_cluster != cluster:
        raise TrustError(f"the certificate is for cluster {got_cluster!r}, not {cluster!r}")
    return node_id
