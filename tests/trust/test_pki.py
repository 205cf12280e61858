"""The cluster CA, node certificates and the credential files (issue 18)."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat

import pytest
from cryptography import x509

from mesh.trust import ca, files, local


def test_init_writes_the_files_with_private_modes(tmp_path):
    creds = local.init_cluster(tmp_path / "n1", "show", "n1", ["127.0.0.1", "localhost"])
    d = tmp_path / "n1" / "tls"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in ("ca.key", "node.key"):
        assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600
    assert creds.node_id == "n1" and creds.cluster == "show"
    assert creds.ca_bundle == d / "ca.pem" and creds.cert == d / "node.pem" and creds.key == d / "node.key"
    cert = local.node_cert(tmp_path / "n1")
    assert files.cert_node_id(cert) == "n1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    assert ca.verify_node_cert(cert, local.bundle(tmp_path / "n1"), "show") == "n1"


def test_init_twice_is_refused_and_changes_nothing(tmp_path):
    local.init_cluster(tmp_path, "show", "n1")
    before = (tmp_path / "tls" / "ca.pem").read_bytes()
    with pytest.raises(ca.TrustError, match="already holds credentials"):
        local.init_cluster(tmp_path, "show", "n1")
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == before


def test_no_tls_dir_is_psk_mode_and_a_missing_file_is_an_error(tmp_path):
    assert files.load_credentials(tmp_path) is None
    local.init_cluster(tmp_path, "show", "n1")
    (tmp_path / "tls" / "node.key").unlink()
    with pytest.raises(files.CredentialsError, match=r"node\.key is missing"):
        files.load_credentials(tmp_path)


def test_cert_node_id_refuses_a_certificate_without_the_uri(tmp_path):
    local.init_cluster(tmp_path, "show", "n1")
    with pytest.raises(ValueError, match="hana:// node URI SAN"):
        files.cert_node_id(local.bundle(tmp_path)[0])  # the CA: no hana:// URI
    for bad in ("http://show/n1", "hana://show", "hana:///n1", "hana://show/a/b"):
        with pytest.raises(ValueError):
            files.parse_node_uri(bad)


def test_credentials_changed_sees_a_renewal_once(tmp_path):
    local.init_cluster(tmp_path, "show", "n1")
    files.load_credentials(tmp_path)
    assert not files.credentials_changed(tmp_path)
    s = local.signer(tmp_path)
    assert s is not None
    key = local.node_key(tmp_path)
    local.write_node(tmp_path, None, ca.issue(s.key, s.cert, key.public_key(), "show", "n1", ["127.0.0.1"]))
    assert files.credentials_changed(tmp_path)
    assert not files.credentials_changed(tmp_path)


def test_another_clusters_ca_an_expired_and_a_future_certificate_are_refused(tmp_path):
    local.init_cluster(tmp_path / "a", "show", "n1")
    local.init_cluster(tmp_path / "b", "show", "n1")
    cert_b = local.node_cert(tmp_path / "b")
    with pytest.raises(ca.TrustError, match="not signed by this cluster's CA"):
        ca.verify_node_cert(cert_b, local.bundle(tmp_path / "a"), "show")
    s = local.signer(tmp_path / "a")
    assert s is not None
    then = ca.utcnow() - dt.timedelta(days=10)
    old = ca.issue(s.key, s.cert, ca.new_key().public_key(), "show", "n2", [], now=then, lifetime_s=3600)
    with pytest.raises(ca.TrustError, match="expired"):
        ca.verify_node_cert(old, s.bundle, "show")
    other = ca.issue(s.key, s.cert, ca.new_key().public_key(), "other", "n2", [])
    with pytest.raises(ca.TrustError, match="cluster 'other'"):
        ca.verify_node_cert(other, s.bundle, "show")


def test_the_files_make_an_ssl_context_for_both_ends(tmp_path):
    """Python's ssl (OpenSSL, TLS 1.3) takes the files as they are, as server and as client."""
    creds = local.init_cluster(tmp_path, "show", "n1")
    for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(creds.cert, creds.key)
        ctx.load_verify_locations(cafile=str(creds.ca_bundle))


def test_a_csr_round_trip_keeps_hosts_and_refuses_garbage():
    key = ca.new_key()
    csr = ca.make_csr(key, "show", "n4", ["127.0.0.1", "disp4.local"])
    from cryptography.hazmat.primitives import serialization

    back = ca.load_csr(csr.public_bytes(serialization.Encoding.PEM))
    assert sorted(ca.csr_hosts(back)) == ["127.0.0.1", "disp4.local"]
    with pytest.raises(ca.TrustError, match="not a PEM certificate signing request"):
        ca.load_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(ca.TrustError, match="larger"):
        ca.load_csr(b"x" * 20000)


def test_the_status_page_lists_pending_machines_with_an_approve_button_for_admins():
    """Static check of the page (mesh/api/static): the pending list and the
    admin-only Approve button calling POST /v1/trust/approve (a route of the app)."""
    from pathlib import Path

    from mesh.api.app import create_app
    from tests.api.edge_kit import RecordingNode

    static = Path(__file__).resolve().parents[2] / "mesh" / "api" / "static"
    html, script = (static / "index.html").read_text(), (static / "app.js").read_text()
    assert 'id="pending-box"' in html and 'id="pending"' in html
    assert "renderPending(members.pending || [])" in script
    assert 'can("admin")' in script.split("function renderPending", 1)[1].split("function approvePending", 1)[0]
    assert 'api("POST", "/v1/trust/approve", { id })' in script
    routes = {(r.method, r.resource.canonical) for r in create_app(RecordingNode()).router.routes() if r.resource}
    assert ("POST", "/v1/trust/approve") in routes


def test_members_list_shows_pending_machines():
    from mesh import cli_tables as t
    from tests.cli.test_views import draw

    doc = {
        "id": "n1",
        "leader": "n1",
        "members": [],
        "discovered": [],
        "pending": [
            {"id": "n4", "address": "127.0.0.1:9", "fingerprint": "ab" * 32, "first_seen": 1, "source": "request"}
        ],
    }
    text = "\n".join(draw(t.members_table(doc), 160))
    assert "n4" in text and "pending (key sha256 abababababababab" in text and "127.0.0.1:9" in text
