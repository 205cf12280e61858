"""`hana-node audit verify` and `hana-node audit export --signed FILE`
(issue 18): the audit trail's hash chain checked on every member, offline in
a stopped node's data, or in a signed export.

verify (online, --api): every member the asked node lists (and the node
itself) is asked for GET /v1/audit/verify; each node's own chain must hold,
and every two nodes must have the same hash at the same seq (compared at the
lowest newest seq among them; where they differ, the first differing seq is
found by bisection over `?at=`). Unreachable members are reported, not
counted as breaks.
verify --data-dir DIR: the stopped node's snapshot and committed log entries
replayed into a state machine (the node's own code), then its chain checked.
verify --file FILE: a signed export's signature and its chain.
Every break is printed as `node=… seq=… break: reason`; exit 1 on any.

Signed exports: {"format": "hana-audit-export", "version": 1, "node",
"seq", "head", "cut", "entries", "signer": {"algorithm", "public_key"
(PEM), "fingerprint"}, "signature"} where signature (base64) is over the
canonical encoding of everything else. The key: --signing-key FILE, else the
node's TLS key (`tls/node.key` in its data dir, when the cluster
credentials exist), else `audit-signing.key` in the data dir (Ed25519, made
0600 at first use). The data dir is --data-dir or the one the node serving
--api told this user about (the admin token's pointer).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson

from mesh.node.flags import CliError
from mesh.state.audit import verify_chain
from mesh.state.values import canonical

EXPORT_FORMAT = "hana-audit-export"
MAX_EXPORT_BYTES = 256 << 20
SIGNING_KEY_FILE = "audit-signing.key"


def add_arguments(audit: argparse.ArgumentParser) -> None:
    audit.add_argument("--data-dir", default=None, help="verify: a stopped node's data; export: where its key is")
    audit.add_argument("--file", default=None, help="verify: a signed export made by `audit export --signed`")
    audit.add_argument("--signed", default=None, metavar="FILE", help="export: write the signed trail to FILE")
    audit.add_argument("--signing-key", default=None, metavar="FILE", help="export: a PEM private key to sign with")
    audit.add_argument(
        "--signer-ca",
        default=None,
        metavar="FILE",
        help="verify --file: the export must be signed by a node certificate issued by a CA in this PEM bundle",
    )
    audit.add_argument(
        "--encrypt-at-rest",
        default=None,
        metavar="KEYFILE",
        help="verify --data-dir: the key of a node started with --encrypt-at-rest",
    )


def _say(node: str, seq: Any, what: str) -> None:
    print(f"node={node} seq={seq} {what}", flush=True)


def _report(node: str, doc: dict[str, Any]) -> bool:
    for b in doc.get("breaks", []):
        _say(node, b.get("seq"), f"break: {b.get('reason')}")
    if doc.get("ok"):
        extra = f" legacy={doc['legacy']}" if doc.get("legacy") else ""
        _say(node, doc.get("seq"), f"ok chained={doc.get('chained')} head={doc.get('head') or '-'}{extra}")
        return True
    return False


# -- offline -------------------------------------------------------------------------


def replay_data_dir(data_dir: Path, key: bytes | None = None) -> Any:
    """The HanaState a stopped node's data dir holds: its snapshot and its
    committed entries applied. CliError if it cannot be read."""
    from mesh.raft import ConfChange, EntryType
    from mesh.raft.errors import MessageDecodeError
    from mesh.state.model import HanaState
    from mesh.storage.disk import DiskStorage
    from mesh.storage.errors import DiskStorageError

    if not (data_dir / "wal").is_dir():
        raise CliError(f"{data_dir} holds no node data (no wal/ directory)")
    try:
        with DiskStorage(data_dir, key=key) as st:
            state = HanaState()
            snap = st.snapshot()
            if snap.meta.index > 0:
                state.restore(snap.data, snap.meta.index)
            commit = st.hard_state().commit
            lo = max(snap.meta.index + 1, st.first_index())
            for e in st.entries(lo, commit + 1) if commit >= lo else []:
                if e.type == EntryType.NORMAL and e.data:
                    state.apply(e.index, e.data)
                elif e.type == EntryType.CONF_CHANGE:
                    # Undecodable: the node skips it the same way (mesh.replica).
                    with contextlib.suppress(MessageDecodeError):
                        state.apply_conf_change(e.index, ConfChange.decode(e.data))
            return state
    except DiskStorageError as exc:
        raise CliError(f"cannot read {data_dir}: {exc}") from exc
    except ValueError as exc:
        raise CliError(f"{data_dir}: the snapshot does not load: {exc}") from exc


def verify_offline(data_dir: Path, key_file: str | None = None) -> int:
    from mesh.sealing import load_key

    key = load_key(key_file, "--encrypt-at-rest") if key_file else None
    state = replay_data_dir(data_dir, key)
    # The node id is not stored in its data: the directory's name stands
    # for it (data/<node id> by default).
    print(f"data_dir={data_dir} applied_index={state.applied_index}", flush=True)
    return 0 if _report(data_dir.resolve().name, state.audit_trail.verify()) else 1


# -- signed exports ----------------------------------------------------------------------


def _data_dir_for(api: str) -> Path | None:
    from mesh.node.credentials import _pointer, read_private

    try:
        return Path(read_private(_pointer(api), "node pointer").decode().strip())
    except (CliError, UnicodeDecodeError, OSError):
        return None


def load_signing_key(args: argparse.Namespace) -> tuple[Any, bytes | None]:
    """(private key, its certificate's PEM when it is the node's TLS key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    cert: bytes | None = None
    if args.signing_key:
        path = Path(args.signing_key)
    else:
        data_dir = Path(args.data_dir) if args.data_dir else _data_dir_for(args.api)
        if data_dir is None:
            raise CliError("no key to sign with: give --signing-key FILE or --data-dir DIR (the node's data)")
        tls_key = data_dir / "tls" / "node.key"
        path = tls_key if tls_key.exists() else data_dir / SIGNING_KEY_FILE
        cert_path = data_dir / "tls" / "node.pem"
        if path == tls_key and cert_path.exists():
            try:
                cert = cert_path.read_bytes()
            except OSError as exc:
                raise CliError(f"cannot read the node certificate {cert_path}: {exc}") from exc
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, pem)
            finally:
                os.close(fd)
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None), cert
    except (OSError, ValueError, TypeError) as exc:
        raise CliError(f"cannot load the signing key {path}: {exc}") from exc


def _sign(key: Any, data: bytes) -> tuple[str, bytes]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ecdsa-sha256", key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa-pkcs1-sha256", key.sign(data, PKCS1v15(), hashes.SHA256())
    raise CliError(f"cannot sign with a {type(key).__name__}: use an Ed25519, EC or RSA key")


def _check(algorithm: str, public_pem: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15

    try:
        pub = serialization.load_pem_public_key(public_pem)
        if algorithm == "ed25519" and isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(signature, data)
        elif algorithm == "ecdsa-sha256" and isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif algorithm == "rsa-pkcs1-sha256" and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(signature, data, PKCS1v15(), hashes.SHA256())
        else:
            return False
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def signed_export(trail: dict[str, Any], key: Any, cert: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    algorithm, _ = _sign(key, b"")
    doc = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "node": trail["node"],
        "seq": trail["seq"],
        "head": trail["head"],
        "cut": trail["cut"],
        "entries": trail["entries"],
        "signer": {
            "algorithm": algorithm,
            "public_key": public_pem.decode(),
            "fingerprint": "sha256:" + hashlib.sha256(public_pem).hexdigest(),
        },
    }
    if cert is not None:
        doc["signer"]["certificate"] = cert.decode()
    _, sig = _sign(key, canonical(doc))
    doc["signature"] = base64.b64encode(sig).decode()
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def _check_certificate(signer: dict[str, Any], public_pem: bytes, ca_file: str | None) -> str | None:
    """Why the signer's certificate does not vouch for its key (None: it
    does, or there is nothing to check)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    pem = signer.get("certificate")
    if pem is None:
        return "the export carries no certificate: it was not signed with a node's cluster key" if ca_file else None
    try:
        cert = x509.load_pem_x509_certificate(str(pem).encode())
    except ValueError as exc:
        return f"the signer's certificate does not load ({exc})"
    cert_key = cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if cert_key != public_pem:
        return "the signer's certificate is for another key"
    if ca_file is None:
        return None
    try:
        cas = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise CliError(f"--signer-ca {ca_file}: {exc}") from exc
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return None
        except (ValueError, TypeError, InvalidSignature):
            continue
    return f"the signer's certificate ({cert.subject.rfc4514_string()}) was not issued by a CA in {ca_file}"


def verify_file(path: Path, ca_file: str | None = None) -> int:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_EXPORT_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    if len(raw) > MAX_EXPORT_BYTES:
        raise CliError(f"{path} is larger than {MAX_EXPORT_BYTES} bytes: not an audit export")
    try:
        doc = orjson.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or doc.get("version") != 1:
            raise ValueError("not a hana audit export (format/version)")
        sig = base64.b64decode(doc.pop("signature"), validate=True)
        signer = doc["signer"]
        algorithm, public_pem = str(signer["algorithm"]), str(signer["public_key"]).encode()
        entries, head, cut, seq = doc["entries"], doc["head"], doc["cut"], doc["seq"]
        if not isinstance(entries, list) or not isinstance(head, str) or not isinstance(cut, str):
            raise ValueError("entries, head or cut malformed")
        if type(seq) is not int:
            raise ValueError("seq is not an integer")
    except (ValueError, KeyError, TypeError) as exc:
        print(f"file={path} break: not a valid signed audit export ({exc})", flush=True)
        return 1
    node = str(doc.get("node"))
    if not _check(algorithm, public_pem, sig, canonical(doc)):
        _say(node, seq, f"break: the signature does not match (file {path} altered, or not signed by its signer)")
        return 1
    why = _check_certificate(signer, public_pem, ca_file)
    if why is not None:
        _say(node, seq, f"break: {why}")
        return 1
    checked = " certificate=checked" if ca_file else ""
    print(f"file={path} signature ok signer={signer.get('fingerprint')} algorithm={algorithm}{checked}", flush=True)
    return 0 if _report(node, verify_chain(entries, head, cut, seq)) else 1


# -- online --------------------------------------------------------------------------


async def verify_online(args: argparse.Namespace, make_client: Any) -> int:
    from mesh import client

    async with make_client(args.api, args) as c:
        members = await c.members()
    targets: dict[str, str] = {str(members.get("id")): args.api}
    for m in members.get("members", []):
        if m.get("id") in targets:
            continue
        if m.get("api"):
            targets[str(m["id"])] = str(m["api"])
        else:
            _say(str(m.get("id")), "-", "unreachable: no API address known for this member")
    reports: dict[str, dict[str, Any]] = {}
    bad = False
    for nid, api in targets.items():
        try:
            async with make_client(api, args) as c:
                doc = await c.request("GET", "/v1/audit/verify")
        except (client.ApiError, client.Unreachable) as exc:
            _say(nid, "-", f"unreachable: {exc}")
            continue
        reports[nid] = {**doc, "api": api}
        if not _report(nid, doc):
            bad = True
    if not reports:
        raise CliError("no member answered")
    # Across nodes: the same hash at the same seq.
    ref_id = next(iter(reports))
    common = min(int(r.get("seq") or 0) for r in reports.values())
    floor = max(int(r.get("first_seq") or 0) for r in reports.values())
    if common >= max(floor, 1) and len(reports) > 1:

        async def at(nid: str, seq: int) -> str | None:
            async with make_client(reports[nid]["api"], args) as c:
                doc = await c.request("GET", "/v1/audit/verify", params={"at": str(seq)})
            h = doc.get("at", {}).get("hash")
            return h if isinstance(h, str) else None

        ref_head = await at(ref_id, common)
        for nid in reports:
            if nid == ref_id or await at(nid, common) == ref_head:
                continue
            lo, hi = max(floor, 1), common  # first seq where they differ: in [lo, hi]
            while lo < hi:
                mid = (lo + hi) // 2
                if await at(nid, mid) == await at(ref_id, mid):
                    lo = mid + 1
                else:
                    hi = mid
            _say(nid, lo, f"break: entry {lo} differs from node {ref_id}'s (the chains part there)")
            bad = True
        if not bad:
            print(f"nodes={len(reports)} agree at seq={common} head={ref_head}", flush=True)
    return 1 if bad else 0


async def audit_command(args: argparse.Namespace, make_client: Any) -> int:
    """`hana-node audit verify|export` (list stays in mesh.cli)."""
    if args.action == "verify":
        if args.file:
            return verify_file(Path(args.file), args.signer_ca)
        if args.data_dir:
            return verify_offline(Path(args.data_dir), args.encrypt_at_rest)
        return await verify_online(args, make_client)
    if not args.signed:
        raise CliError("audit export needs --signed FILE")
    key, cert = load_signing_key(args)
    async with make_client(args.api, args) as c:
        trail = await c.request("GET", "/v1/audit/trail")
    blob = signed_export(trail, key, cert)
    Path(args.signed).write_bytes(blob)
    print(f"wrote {args.signed} ({len(trail['entries'])} entries, seq {trail['seq']}, signed)", flush=True)
    return 0
