"""What `serve` does about credentials before the node starts: use the ones
in DATA/tls/, or get them with `--join TOKEN` or `--request-join URL`.

`hana-node init` leaves DATA/tls/bootstrap: the first start of that node
bootstraps a one-node cluster of itself (the marker is removed once the
node runs), as `--peers` of only itself would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from mesh.trust import ca, client, files, join, tokens

log = logging.getLogger("mesh.trust")
BOOTSTRAP = "bootstrap"


class BootError(Exception):
    """Credentials could not be had: the message says why and what to do."""


def wants_bootstrap(data_dir: Path) -> bool:
    return (files.tls_dir(data_dir) / BOOTSTRAP).is_file()


def bootstrapped(data_dir: Path) -> None:
    (files.tls_dir(data_dir) / BOOTSTRAP).unlink(missing_ok=True)


async def find_member_api(
    cluster: str, node_id: str, raft: tuple[str, int], api: str, interfaces: list[str] | None, stop: asyncio.Event
) -> str | None:
    """`--request-join mdns`: advertise this machine (fresh) and browse for a
    member of `cluster` that advertises its API; its URL (https:// when it
    answers TLS, else http://), or None if stopped first."""
    from mesh.discovery.base import BootstrapState
    from mesh.discovery.mdns import MdnsDiscovery

    d = MdnsDiscovery(cluster, node_id, raft, api, interfaces)
    await d.start()
    try:
        said = False
        while not stop.is_set():
            members = sorted(
                (p.node_id, p.api) for p in d.peers().values() if p.state == BootstrapState.MEMBER and p.api
            )
            for _, addr in members:
                for scheme in ("https", "http"):
                    url = f"{scheme}://{addr}"
                    try:
                        await asyncio.to_thread(client.request, url, "GET", "/v1/trust/ca", None, None, 3.0)
                    except client.JoinError:
                        continue
                    log.info("node=%s event=member_found_by_mdns api=%s", node_id, url)
                    return url
            if not said:
                log.info("node=%s event=looking_for_members_by_mdns cluster=%s", node_id, cluster)
                said = True
            d.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await d.changed.wait()
        return None
    finally:
        await d.stop()


def csr_hosts(raft_host: str, api_host: str) -> list[str]:
    hosts = [raft_host, api_host]
    if any(h.startswith("127.") or h in ("::1", "localhost") for h in hosts):
        hosts.append("localhost")
    return hosts


async def obtain(
    data_dir: Path,
    node_id: str,
    join_token: str | None,
    request_url: str | None,
    raft: tuple[str, int],
    api: tuple[str, int],
    stop: asyncio.Event,
    cluster: str = "hana",
    interfaces: list[str] | None = None,
) -> files.NodeCredentials | None:
    """The node's credentials (None: PSK mode, or stopped while pending).
    Raises BootError with what to do."""
    try:
        creds = files.load_credentials(data_dir)
    except files.CredentialsError as exc:
        raise BootError(str(exc)) from None
    if creds is not None:
        if creds.node_id != node_id:
            raise BootError(f"{creds.cert} is the certificate of {creds.node_id!r}, not of --id {node_id!r}")
        if join_token or request_url:
            log.info("node=%s event=join_skipped reason=credentials_exist path=%s", node_id, creds.cert.parent)
        return creds
    hosts = csr_hosts(raft[0], api[0])
    raft_s, api_s = f"{raft[0]}:{raft[1]}", f"{api[0]}:{api[1]}"
    try:
        if join_token:
            got, role = await asyncio.to_thread(
                join.join_with_token, data_dir, join_token, node_id, hosts, raft_s, api_s
            )
            log.info("node=%s event=joined cluster=%s role=%s", node_id, got.cluster, role)
            return got
        if request_url:
            if request_url == "mdns":
                found = await find_member_api(cluster, node_id, raft, api_s, interfaces, stop)
                if found is None:
                    return None
                request_url = found
            url = request_url if "://" in request_url else f"http://{request_url}"
            return await asyncio.to_thread(join.request_join, data_dir, url, node_id, hosts, raft_s, api_s, stop.is_set)
    except tokens.TokenError as exc:
        raise BootError(f"--join: {exc}; nothing was written or sent") from None
    except client.JoinError as exc:
        raise BootError(f"--join: {exc}; nothing was written") from None
    except (ca.TrustError, files.CredentialsError) as exc:
        raise BootError(str(exc)) from None
    return None
