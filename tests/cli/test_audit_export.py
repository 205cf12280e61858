"""Signed audit exports (issue 18): signed with the node's TLS key and
certificate (checked against the cluster CA with --signer-ca) or with a key
made in the data dir; an altered export, a certificate from another CA or
one for another key fails."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh import cli_audit
from tests.state.helpers import Driver


def trail() -> dict[str, Any]:
    d = Driver()
    for i in range(4):
        d("save", name=f"s{i}")
    t = d.hs.audit_trail
    return {"node": "n1", "seq": t.seq, "head": t.head, "cut": t.cut, "entries": [e for _, e in t.entries]}


def ca_pair(name: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def node_cert(ca_key: Any, ca: x509.Certificate, key: Any) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_signed_with_the_node_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_key, ca = ca_pair("cluster-ca")
    _, other_ca = ca_pair("other-ca")
    (tmp_path / "ca.pem").write_bytes(pem(ca))
    (tmp_path / "other.pem").write_bytes(pem(other_ca))
    # The node's credentials as T1 writes them.
    tls = tmp_path / "data" / "tls"
    tls.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    (tls / "node.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tls / "node.pem").write_bytes(node_cert(ca_key, ca, key))
    args = argparse.Namespace(signing_key=None, data_dir=str(tmp_path / "data"), api="127.0.0.1:1")
    signing, cert = cli_audit.load_signing_key(args)
    assert cert is not None
    export = tmp_path / "audit.json"
    export.write_bytes(cli_audit.signed_export(trail(), signing, cert))

    assert cli_audit.verify_file(export, str(tmp_path / "ca.pem")) == 0
    assert "signature ok" in capsys.readouterr().out
    assert cli_audit.verify_file(export, str(tmp_path / "other.pem")) == 1
    assert "not issued by a CA" in capsys.readouterr().out
    # A certificate swapped for one of another key: refused.
    doc = orjson.loads(export.read_bytes())
    doc["signer"]["certificate"] = node_cert(ca_key, ca, ec.generate_private_key(ec.SECP256R1())).decode()
    export.write_bytes(orjson.dumps(doc))
    assert cli_audit.verify_file(export, str(tmp_path / "ca.pem")) == 1


def test_signed_with_a_key_made_in_the_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(signing_key=None, data_dir=str(tmp_path), api="127.0.0.1:1")
    signing, cert = cli_audit.load_signing_key(args)
    key_file = tmp_path / cli_audit.SIGNING_KEY_FILE
    assert cert is None and key_file.stat().st_mode & 0o777 == 0o600
    again, _ = cli_audit.load_signing_key(args)  # the same key next time
    assert again.public_key().public_bytes_raw() == signing.public_key().public_bytes_raw()
    export = tmp_path / "audit.json"
    export.write_bytes(cli_audit.signed_export(trail(), signing))
    assert cli_audit.verify_file(export) == 0
    # Without a certificate, --signer-ca refuses it.
    (tmp_path / "ca.pem").write_bytes(pem(ca_pair("ca")[1]))
    assert cli_audit.verify_file(export, str(tmp_path / "ca.pem")) == 1
    assert "no certificate" in capsys.readouterr().out
    # Altered: the signature fails; garbage: not an export.
    doc = orjson.loads(export.read_bytes())
    doc["entries"][1]["author"] = "mallory"
    export.write_bytes(orjson.dumps(doc))
    assert cli_audit.verify_file(export) == 1
    assert "signature does not match" in capsys.readouterr().out
    export.write_bytes(b"{garbage")
    assert cli_audit.verify_file(export) == 1
    assert "not a valid signed audit export" in capsys.readouterr().out
