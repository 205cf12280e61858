"""The trust side of a running node: what the API's trust routes call, the
`peer_allowed` / `note_pending` callables the transport is given, and a
background loop (`run`) that keeps this node's credentials in step with the
log.

Who signs: only a machine holding `tls/ca.key` (the one that ran `hana-node
init`). The CA key is never replicated: the token names the signers' API
addresses (every signer registers its address through the log with
`trust_signer`), a join or a renewal goes to a signer, and the signer puts
each certificate it issues through the log (`trust_issue`) before handing it
out, so the state machine decides whether a token is still good and every
node knows every serial. A second signer is made by copying ca.key to
another machine by hand (then it registers too).

The loop, every `interval` seconds:
- a signer registers its API address and its own certificate's serial;
- the controller carries out admissions: a node that joined is added as a
  learner at the raft address it gave, and promoted once caught up when its
  token said voter (the ordinary membership path, `change`);
- every node writes the CA bundle of the log (`trust_ca`) to tls/ca.pem and
  acknowledges it (`trust_ca_ack`): during a roll it trusts both CAs;
- every node renews its certificate at 2/3 of its lifetime, and during a
  roll once every member trusts the new CA (so that nobody meets a
  certificate it cannot check);
- the signer ends a roll (bundle of the new CA alone, `phase: done`) once
  every member holds a certificate of the new CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.state.model import HanaState
from mesh.state.trust import bundle_id
from mesh.trust import ca, client, files, local, tokens

log = logging.getLogger("mesh.trust")
NEXT_KEY = "ca-next.key"
RENEW_AT = 2 / 3
MAX_NOTED = 256


class TrustFailure(Exception):
    """A trust request refused: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


class TrustNode(Protocol):
    """What the service needs of the node (mesh.adapter.NodeAdapter has it)."""

    @property
    def node_id(self) -> str: ...

    @property
    def kv(self) -> HanaState: ...

    def status(self) -> dict[str, Any]: ...

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]: ...


# (node id, action, raft (host, port) or None) -> the change's result
ChangeMembership = Callable[[str, str, "tuple[str, int] | None"], Awaitable[Any]]


def pem_list(certs: list[x509.Certificate]) -> list[str]:
    return [ca.cert_pem(c).decode() for c in certs]


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


class TrustHooks:
    """The transport's two callables, bound before the node exists and
    delegating to the service once it is attached. Until then every validly
    signed peer is allowed (the state is not known yet) and noted machines
    are kept for the service."""

    def __init__(self) -> None:
        self.service: TrustService | None = None
        self._early: list[tuple[str, str, str]] = []

    def peer_allowed(self, node_id: str, serial: int) -> bool:
        return True if self.service is None else self.service.peer_allowed(node_id, serial)

    def note_pending(self, node_id: str, address: str, fingerprint: str) -> None:
        if self.service is None:
            if len(self._early) < MAX_NOTED:
                self._early.append((node_id, address, fingerprint))
            return
        self.service.note_pending(node_id, address, fingerprint)

    def attach(self, service: TrustService) -> None:
        self.service = service
        for args in self._early:
            service.note_pending(*args)
        self._early.clear()


class TrustService:
    def __init__(
        self,
        data_dir: Path,
        node: TrustNode,
        change: ChangeMembership,
        api_url: str,
        *,
        lifetime_s: int = ca.NODE_SECONDS,
        interval: float = 1.0,
        healthy_lag: int = 250,
    ) -> None:
        creds = files.load_credentials(data_dir)
        if creds is None:
            raise files.CredentialsError(f"{files.tls_dir(data_dir)} does not exist")
        self.data_dir = data_dir
        self.node = node
        self.change = change
        self.api_url = api_url
        self.cluster = creds.cluster
        self.lifetime_s = lifetime_s
        self.interval = interval
        self.healthy_lag = healthy_lag
        self._noted: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewing = False
        self.renewals = 0
        self._refusals: dict[str, float] = {}  # "route:code" -> when last logged
        self.refused = 0

    # -- small helpers -----------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def trust(self) -> Any:
        return self.node.kv.trust

    def now(self) -> dt.datetime:
        return ca.utcnow()

    def bundle(self) -> list[x509.Certificate]:
        return local.bundle(self.data_dir)

    def signer(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
        """The key and CA certificate this machine signs with now, or None.
        During a roll: the new CA once every member trusts it, else the old."""
        s = local.signer(self.data_dir)
        if s is None:
            return None
        nxt = files.tls_dir(self.data_dir) / NEXT_KEY
        if nxt.is_file() and self._roll_acked():
            key = ca.load_key(files.read_bounded(nxt))
            for c in self.bundle():
                if ca.same_key(c, key):
                    return key, c
        return s.key, s.cert

    def _members(self) -> dict[str, bool]:
        return {m["id"]: bool(m.get("voter")) for m in self.node.status().get("members", [])}

    def _roll_acked(self) -> bool:
        roll = self.trust.ca
        if roll.get("phase") != "roll":
            return False
        return all(self.trust.ca_acks.get(m) == roll["bundle"] for m in self._members())

    async def _propose(self, command: dict[str, Any], author: str | None = None) -> dict[str, Any]:
        command = {**command, "author": author or f"node:{self.node_id}", "role": "admin"}
        result = await self.node.propose(self.node.kv.prepare(command))
        err = result.get("error")
        if err is not None:
            code = str(err.get("code"))
            status = 403 if code in ("join_refused", "forbidden") else 404 if code == "not_found" else 409
            raise TrustFailure(status, code, str(err.get("message")), reason=err.get("reason"))
        return result

    def _need_signer(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        s = self.signer()
        if s is None:
            signers = sorted(self.trust.signers.values())
            raise TrustFailure(
                503,
                "not_signer",
                f"{self.node_id} does not hold the cluster CA key; ask a signer: {', '.join(signers) or 'none known'}",
                signers=signers,
            )
        return s

    async def _issue(
        self, csr_pem: Any, node_id: Any, via: str, extra: dict[str, Any], hosts_extra: list[str] | None = None
    ) -> tuple[x509.Certificate, dict[str, Any]]:
        if not isinstance(csr_pem, str):
            raise TrustFailure(400, "invalid_value", "csr must be a PEM certificate signing request")
        if not isinstance(node_id, str):
            raise TrustFailure(400, "invalid_value", "node_id must be a string")
        try:
            ca.check_node_id(node_id)
            csr = ca.load_csr(csr_pem.encode())
            hosts = ca.csr_hosts(csr)
        except ca.TrustError as exc:
            raise TrustFailure(400, "invalid_value", str(exc)) from None
        pub = csr.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        key, ca_cert = self._need_signer()
        cert = ca.issue(key, ca_cert, pub, self.cluster, node_id, hosts, self.now(), self.lifetime_s)
        result = await self._propose(
            {
                "op": "trust_issue",
                "node_id": node_id,
                "serial": format(cert.serial_number, "x"),
                "fingerprint": ca.key_fingerprint(pub),
                "not_after": _ms(cert.not_valid_after_utc),
                "via": via,
                "ca": ca.fingerprint(ca_cert),
                **extra,
            }
        )
        log.info(
            "node=%s event=certificate_issued member=%s via=%s serial=%x not_after=%s",
            self.node_id,
            node_id,
            via,
            cert.serial_number,
            cert.not_valid_after_utc.isoformat(),
        )
        return cert, result

    def _answer(self, cert: x509.Certificate, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "node_id": result.get("node_id"),
            "role": result.get("role", "learner"),
            "cert": ca.cert_pem(cert).decode(),
            "ca": pem_list(self.bundle()),
            "signers": sorted(self.trust.signers.values()),
            "peers": self._peer_addresses(),
        }

    def _peer_addresses(self) -> dict[str, str]:
        return {m["id"]: m["raft"] for m in self.node.status().get("members", []) if m.get("raft")}

    @staticmethod
    def _addr(raw: Any, what: str) -> str:
        if raw is None:
            return ""
        if not isinstance(raw, str) or len(raw) > 300 or not raw or any(c.isspace() or c in "/@" for c in raw):
            raise TrustFailure(400, "invalid_value", f"{what} must be host:port")
        return raw

    # -- the API's requests --------------------------------------------------------------

    def ca_doc(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "certs": pem_list(self.bundle())}

    async def invite(self, expires_s: int, role: str, author: str) -> dict[str, Any]:
        signers = sorted(set(self.trust.signers.values()) | ({self.api_url} if self.signer() else set()))
        if not signers:
            raise TrustFailure(409, "no_signer", "no machine holding the cluster CA key is known: start it first")
        s = self.signer()
        fp = ca.fingerprint(s[1] if s is not None else self.bundle()[-1])
        expires = int(time.time() * 1000) + expires_s * 1000
        try:
            tok = tokens.new_token(self.cluster, signers, fp, expires, role)
            text = tok.encode()
        except tokens.TokenError as exc:
            raise TrustFailure(400, "invalid_value", str(exc)) from None
        command = {"op": "trust_invite", "id": tok.id, "hash": tok.secret_hash, "expires": expires, "member_role": role}
        await self._propose(command, author)
        log.info(
            "node=%s event=join_token_issued token=%s role=%s expires_ms=%d by=%s",
            self.node_id,
            tok.id,
            role,
            expires,
            author,
        )
        return {"token": text, "id": tok.id, "expires": expires, "role": role, "controllers": signers}

    async def join(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            tok = tokens.decode(body.get("token"))
        except tokens.TokenError as exc:
            raise TrustFailure(400, "invalid_token", str(exc)) from None
        if tok.cluster != self.cluster:
            raise TrustFailure(
                403, "join_refused", f"the token is for cluster {tok.cluster!r}, this is {self.cluster!r}"
            )
        try:
            tokens.check_expiry(tok, int(time.time() * 1000))
        except tokens.TokenError as exc:
            raise TrustFailure(403, "join_refused", str(exc), reason="expired") from None
        # Checked here first, so that a guessed or replayed token costs no log
        # entry; the log decides again (two joins racing spend it once).
        known = self.trust.tokens.get(tok.id)
        if known is None or not hmac.compare_digest(known["hash"], tok.secret_hash):
            raise TrustFailure(403, "join_refused", "unknown join token or wrong secret", reason="unknown")
        if known.get("spent"):
            raise TrustFailure(
                403,
                "join_refused",
                f"the join token was already used (by {known['spent']}): ask for a new one",
                reason="spent",
            )
        extra = {"token": tok.id, "proof": tok.secret_hash}
        extra["raft"] = self._addr(body.get("raft"), "raft")
        extra["api"] = self._addr(body.get("api"), "api")
        cert, result = await self._issue(body.get("csr"), body.get("node_id"), "token", extra)
        return self._answer(cert, result)

    async def request_join(self, body: dict[str, Any], remote: str) -> tuple[int, dict[str, Any]]:
        """A machine without a token: pending until an admin approves its key."""
        csr_pem, node_id = body.get("csr"), body.get("node_id")
        if not isinstance(csr_pem, str) or not isinstance(node_id, str):
            raise TrustFailure(400, "invalid_value", "node_id and csr (PEM) are required")
        try:
            ca.check_node_id(node_id)
            csr = ca.load_csr(csr_pem.encode())
        except ca.TrustError as exc:
            raise TrustFailure(400, "invalid_value", str(exc)) from None
        pub = csr.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        fp = ca.key_fingerprint(pub)
        raft = self._addr(body.get("raft"), "raft")
        approved = self.trust.approved.get(node_id)
        if approved is not None and approved["fingerprint"] == fp:
            cert, result = await self._issue(
                csr_pem, node_id, "approval", {"raft": raft, "api": self._addr(body.get("api"), "api")}
            )
            return 200, self._answer(cert, result)
        if node_id in self._members():
            raise TrustFailure(409, "member_exists", f"{node_id} is a member already: pick another node id")
        known = self.trust.pending.get(node_id)
        if known is None or known["fingerprint"] != fp:
            await self._propose(
                {
                    "op": "trust_pending",
                    "node_id": node_id,
                    "address": raft or remote[:300],
                    "fingerprint": fp,
                    "source": "request",
                }
            )
            log.warning(
                "node=%s event=machine_pending member=%s address=%s fingerprint=%s action=%r",
                self.node_id,
                node_id,
                raft or remote,
                fp,
                f"check the fingerprint with the machine's owner, then: hana-node members approve {node_id}",
            )
        return 202, {"pending": True, "node_id": node_id, "fingerprint": fp}

    async def renew(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("cert")
        if not isinstance(raw, str) or len(raw) > files.MAX_PEM_BYTES:
            raise TrustFailure(400, "invalid_value", "cert must be the node's current PEM certificate")
        try:
            old = x509.load_pem_x509_certificate(raw.encode())
            node_id = ca.verify_node_cert(old, self.bundle(), self.cluster, self.now())
        except (ValueError, ca.TrustError) as exc:
            raise TrustFailure(403, "join_refused", f"renewal refused: {exc}", reason="bad_certificate") from None
        if not self.peer_allowed(node_id, old.serial_number):
            raise TrustFailure(403, "join_refused", f"{node_id}'s certificate is revoked", reason="revoked")
        csr_pem = body.get("csr")
        try:
            csr = ca.load_csr(csr_pem.encode() if isinstance(csr_pem, str) else b"")
        except ca.TrustError as exc:
            raise TrustFailure(400, "invalid_value", str(exc)) from None
        if ca.key_fingerprint(csr.public_key()) != ca.key_fingerprint(old):  # type: ignore[arg-type]
            raise TrustFailure(403, "join_refused", "the CSR's key is not the certificate's", reason="other_key")
        cert, result = await self._issue(csr_pem, node_id, "renew", {"old_serial": format(old.serial_number, "x")})
        return self._answer(cert, result)

    async def approve(self, node_id: Any, author: str) -> dict[str, Any]:
        if not isinstance(node_id, str) or not node_id or len(node_id) > 64:
            raise TrustFailure(400, "invalid_value", "id must be a node id")
        result = await self._propose({"op": "trust_approve", "node_id": node_id}, author)
        log.info(
            "node=%s event=machine_approved member=%s fingerprint=%s by=%s",
            self.node_id,
            node_id,
            result.get("fingerprint"),
            author,
        )
        return {"id": node_id, "approved": True, "fingerprint": result.get("fingerprint")}

    async def rotate_ca(self, author: str) -> dict[str, Any]:
        s = local.signer(self.data_dir)
        if s is None:
            self._need_signer()
            raise AssertionError("unreachable")
        if self.trust.ca.get("phase") == "roll":
            raise TrustFailure(409, "roll_in_progress", "a CA roll is under way: wait for it to end (GET /v1/trust)")
        nxt = files.tls_dir(self.data_dir) / NEXT_KEY
        new_key, new_cert = ca.make_ca(self.cluster, self.now())
        files.write_atomic(nxt, ca.key_pem(new_key))
        certs = [*pem_list([c for c in self.bundle() if ca.same_key(c, s.key)]), ca.cert_pem(new_cert).decode()]
        result = await self._propose({"op": "trust_ca", "certs": certs, "phase": "roll"}, author)
        log.info(
            "node=%s event=ca_roll_started new_ca=%s bundle=%s by=%s",
            self.node_id,
            ca.fingerprint(new_cert),
            result["bundle"],
            author,
        )
        return {"phase": "roll", "bundle": result["bundle"], "new_ca": ca.fingerprint(new_cert)}

    # -- the transport's callables ----------------------------------------------------------

    def peer_allowed(self, node_id: str, serial: int) -> bool:
        allowed: bool = self.trust.peer_allowed(node_id, serial)
        return allowed

    def admissible(self, node_id: str) -> bool:
        """Whether the autopilot may add a machine discovery found: it holds
        a certificate issued through the log and is not removed."""
        return bool(self.trust.issued.get(node_id)) and node_id not in self.trust.removed

    def note_pending(self, node_id: str, address: str, fingerprint: str) -> None:
        """A machine whose certificate this cluster does not trust (or an
        unknown one found by mDNS): into the pending list, once per key."""
        if self._noted.get(node_id) == fingerprint or len(self._noted) >= MAX_NOTED:
            return
        self._noted[node_id] = fingerprint
        command = {
            "op": "trust_pending",
            "node_id": node_id,
            "address": address[:300],
            "fingerprint": fingerprint,
            "source": "tls",
        }
        self._spawn(self._propose(command))

    def log_refusal(self, route: str, exc: TrustFailure, address: str) -> None:
        """One log line per route and code per 10 s (a flood of bad joins
        cannot flood the log); every refusal is counted."""
        self.refused += 1
        key = f"{route}:{exc.code}"
        now = time.monotonic()
        if now - self._refusals.get(key, -1e9) < 10.0:
            return
        if len(self._refusals) > 64:
            self._refusals.clear()
        self._refusals[key] = now
        log.warning(
            "node=%s event=trust_request_refused route=%s from=%s code=%s reason=%s detail=%r refused_total=%d",
            self.node_id,
            route,
            address,
            exc.code,
            exc.extra.get("reason") or "-",
            str(exc),
            self.refused,
        )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:
                log.warning("node=%s event=trust_proposal_failed error=%r", self.node_id, str(exc))

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("node=%s event=trust_step_failed error=%r", self.node_id, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _is_leader(self) -> bool:
        return bool(self.node.status().get("leader") == self.node_id)

    async def step(self) -> None:
        status = self.node.status()
        if not status.get("leader"):
            return
        t = self.trust
        me = self.node_id
        mine = local.node_cert(self.data_dir)
        if local.signer(self.data_dir) is not None:
            if t.signers.get(me) != self.api_url:
                await self._propose({"op": "trust_signer", "node_id": me, "api": self.api_url})
            if not t.issued.get(me):
                await self._propose(
                    {
                        "op": "trust_issue",
                        "node_id": me,
                        "serial": format(mine.serial_number, "x"),
                        "fingerprint": ca.key_fingerprint(mine),
                        "not_after": _ms(mine.not_valid_after_utc),
                        "via": "init",
                    }
                )
        peers = {k: v for k, v in self._peer_addresses().items() if k != me}
        if peers:
            files.write_peers(self.data_dir, peers)
        if self._is_leader():
            await self._admit()
        await self._sync_bundle()
        await self._maybe_renew(mine)
        await self._maybe_end_roll()

    async def _admit(self) -> None:
        members = self._members()
        now = int(time.time() * 1000)
        lag = {m["id"]: m.get("match_index") for m in self.node.status().get("members", [])}
        last = max((v for v in lag.values() if isinstance(v, int)), default=0)
        for nid, adm in list(self.trust.admissions.items()):
            if adm["until"] < now:
                continue
            if nid not in members:
                raft = adm.get("raft") or ""
                host, _, port = raft.rpartition(":")
                addr = (host.strip("[]"), int(port)) if host and port.isdigit() else None
                log.info("node=%s event=admitting member=%s raft=%s as=learner", self.node_id, nid, raft)
                await self.change(nid, "add_learner", addr)
            elif adm["role"] == "voter" and not members[nid]:
                match = lag.get(nid)
                if isinstance(match, int) and last - match <= self.healthy_lag and match > 0:
                    log.info("node=%s event=admitting member=%s as=voter", self.node_id, nid)
                    await self.change(nid, "promote", None)

    async def _sync_bundle(self) -> None:
        roll = self.trust.ca
        if not roll.get("certs"):
            return
        have = pem_list(self.bundle())
        if bundle_id(have) != roll["bundle"]:
            try:
                certs = x509.load_pem_x509_certificates("".join(roll["certs"]).encode())
            except ValueError as exc:
                log.error("node=%s event=ca_bundle_unreadable error=%r", self.node_id, str(exc))
                return
            local.write_bundle(self.data_dir, certs)
            log.info("node=%s event=ca_bundle_written phase=%s cas=%d", self.node_id, roll["phase"], len(certs))
        if self.trust.ca_acks.get(self.node_id) != roll["bundle"] and roll["phase"] == "roll":
            await self._propose({"op": "trust_ca_ack", "node_id": self.node_id, "bundle": roll["bundle"]})

    async def _maybe_renew(self, mine: x509.Certificate) -> None:
        if self._renewing:
            return
        # At 2/3 of the lifetime (counted from issuance: not_before is backdated).
        start, end = mine.not_valid_before_utc + ca.BACKDATE, mine.not_valid_after_utc
        due = start + max(end - start, dt.timedelta(0)) * RENEW_AT
        reason = "lifetime" if self.now() >= due else None
        roll = self.trust.ca
        if reason is None and roll.get("phase") == "roll" and self._roll_acked():
            newest = x509.load_pem_x509_certificate(roll["certs"][-1].encode())
            if mine.issuer != newest.subject:
                reason = "ca_roll"
        if reason is None:
            return
        self._renewing = True
        try:
            await self.renew_now(mine, reason)
        finally:
            self._renewing = False

    async def renew_now(self, mine: x509.Certificate, reason: str) -> None:
        key = local.node_key(self.data_dir)
        hosts = []
        with contextlib.suppress(x509.ExtensionNotFound):
            san = mine.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            hosts = [str(i) for i in san.get_values_for_type(x509.IPAddress)] + list(
                san.get_values_for_type(x509.DNSName)
            )
        csr = ca.make_csr(key, self.cluster, self.node_id, hosts)
        body = {"cert": ca.cert_pem(mine).decode(), "csr": ca.csr_pem(csr)}
        if self.signer() is not None:
            doc = await self.renew(body)
        else:
            doc = await asyncio.to_thread(self._renew_remote, body)
        cert = x509.load_pem_x509_certificate(str(doc["cert"]).encode())
        if not ca.same_key(cert, key):
            raise ca.TrustError("the renewed certificate is not for this node's key")
        local.write_node(self.data_dir, None, cert)
        self.renewals += 1
        log.info(
            "node=%s event=certificate_renewed reason=%s serial=%x not_after=%s",
            self.node_id,
            reason,
            cert.serial_number,
            cert.not_valid_after_utc.isoformat(),
        )

    def _renew_remote(self, body: dict[str, Any]) -> dict[str, Any]:
        ca_pem = files.read_bounded(files.tls_dir(self.data_dir) / files.CA_PEM)
        errors = []
        for addr in sorted(self.trust.signers.values()):
            try:
                status, doc = client.request(addr, "POST", "/v1/trust/renew", body, ca_pem)
                return client.raise_for(status, doc, f"renewal at {addr}")
            except client.JoinError as exc:
                errors.append(str(exc))
        raise client.JoinError("; ".join(errors) or "no signer known to renew at")

    async def _maybe_end_roll(self) -> None:
        roll = self.trust.ca
        nxt = files.tls_dir(self.data_dir) / NEXT_KEY
        if roll.get("phase") != "roll" or not nxt.is_file() or not self._roll_acked():
            return
        new_fp = ca.fingerprint(x509.load_pem_x509_certificate(roll["certs"][-1].encode()))
        for m in self._members():
            issued = self.trust.issued.get(m) or []
            if not issued or issued[-1].get("ca") != new_fp:
                return
        await self._propose({"op": "trust_ca", "certs": roll["certs"][-1:], "phase": "done"})
        nxt.replace(files.tls_dir(self.data_dir) / files.CA_KEY)
        log.info("node=%s event=ca_roll_done ca=%s", self.node_id, new_fp)
