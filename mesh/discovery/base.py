"""The discovery interface, the `Peer` record and the TXT encoding.

A node advertises one service instance of type `_hana-mesh._tcp.local.`
whose TXT record carries (all values ASCII text):

| key | value |
| --- | --- |
| `id` | node id |
| `cluster` | cluster name; peers of other clusters are ignored |
| `raft` | `host:port` for peer traffic |
| `api` | `host:port` of the HTTP API (may be empty) |
| `proto` | wire protocol version (mesh.raft.messages.PROTOCOL_VERSION) |
| `state` | bootstrap state: `fresh`, `locked` or `member` (see mesh/node/bootstrap.py) |
| `conf` | comma-separated ids: candidate (fresh), locked or initial (member) configuration |

Nothing here does IO; `encode_txt` / `decode_txt` are pure so that the
bootstrap logic and the tests can use them without zeroconf.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

SERVICE_TYPE = "_hana-mesh._tcp.local."
# One TXT string is at most 255 bytes ("key=value").
_TXT_MAX = 255


class BootstrapState(enum.StrEnum):
    """What a node says about itself while clusters form (bootstrap.py)."""

    # Empty data directory, not committed to any configuration; `conf` is its
    # current candidate (may change) or empty.
    FRESH = "fresh"
    # Committed for good (persisted) to the configuration in `conf`.
    LOCKED = "locked"
    # Holds a cluster (bootstrapped, joined, or recovered from its data
    # directory); `conf` is the cluster's initial configuration if known.
    MEMBER = "member"


@dataclass(slots=True, frozen=True)
class Peer:
    """One node as discovery found it."""

    node_id: str
    cluster: str
    raft_host: str
    raft_port: int
    api: str = ""
    protocol: int = 0
    # "static" or "mdns"
    source: str = "static"
    state: BootstrapState = BootstrapState.MEMBER
    conf: tuple[str, ...] = field(default=())

    @property
    def raft_address(self) -> tuple[str, int]:
        return (self.raft_host, self.raft_port)


@runtime_checkable
class Discovery(Protocol):
    """What the node needs from a discovery mechanism.

    `start()` begins advertising this node (where the mechanism advertises)
    and looking for others; `stop()` withdraws the advertisement (mDNS sends
    goodbyes). `peers()` is the current view keyed by node id, never
    including this node and never nodes of another cluster. `changed` is set
    whenever the view changes (the consumer clears it, then reads
    `peers()`); `on_change` callbacks run in the event loop with the new view.
    `advertise_state()` updates this node's bootstrap state (a TXT update for
    mDNS; a no-op for static lists).
    """

    @property
    def changed(self) -> object:  # an asyncio.Event; typed loosely so base.py needs no asyncio
        """Set whenever the view changes (read-only here, so that an Event attribute satisfies it)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def peers(self) -> dict[str, Peer]: ...

    def on_change(self, callback: Callable[[dict[str, Peer]], None]) -> None: ...

    async def advertise_state(self, state: BootstrapState, conf: tuple[str, ...]) -> None: ...


def _hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def encode_txt(
    node_id: str,
    cluster: str,
    raft: tuple[str, int],
    api: str,
    protocol: int,
    state: BootstrapState = BootstrapState.FRESH,
    conf: tuple[str, ...] = (),
) -> dict[str, str]:
    """The TXT properties of this node. Raises ValueError if a value cannot
    be carried (a comma in an id, a string over 255 bytes)."""
    for nid in (node_id, *conf):
        if not nid or "," in nid:
            raise ValueError(f"node id {nid!r} cannot be advertised (empty or contains a comma)")
    props = {
        "id": node_id,
        "cluster": cluster,
        "raft": f"{raft[0]}:{raft[1]}",
        "api": api,
        "proto": str(protocol),
        "state": str(state),
        "conf": ",".join(conf),
    }
    for key, value in props.items():
        if len(key.encode()) + 1 + len(value.encode()) > _TXT_MAX:
            raise ValueError(f"TXT {key}= is longer than {_TXT_MAX} bytes")
    return props


def decode_txt(props: Mapping[Any, bytes | str | None], source: str = "mdns") -> Peer:
    """A Peer from TXT properties (as zeroconf gives them: bytes keys and
    values). Raises ValueError on anything missing or malformed."""

    def text(key: str, required: bool = True) -> str:
        raw = props.get(key.encode(), props.get(key))
        if raw is None:
            if required:
                raise ValueError(f"TXT: missing {key}")
            return ""
        try:
            return raw.decode() if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            raise ValueError(f"TXT {key}: not UTF-8") from None

    node_id = text("id")
    cluster = text("cluster")
    if not node_id or not cluster:
        raise ValueError("TXT: empty id or cluster")
    host, port = _hostport(text("raft"), "TXT raft")
    proto = text("proto")
    if not proto.isdigit():
        raise ValueError(f"TXT proto: not a number: {proto!r}")
    try:
        state = BootstrapState(text("state", required=False) or BootstrapState.MEMBER)
    except ValueError:
        raise ValueError(f"TXT state: unknown {text('state')!r}") from None
    conf_text = text("conf", required=False)
    conf = tuple(sorted({c for c in conf_text.split(",") if c})) if conf_text else ()
    return Peer(node_id, cluster, host, port, text("api", required=False), int(proto), source, state, conf)


def parse_interfaces(text: str | None) -> list[str] | None:
    """`--mdns-interfaces` / HANA_MDNS_INTERFACES: comma-separated IP
    addresses. None or empty: None (zeroconf's default: all interfaces)."""
    if text is None or not text.strip():
        return None
    out = [t.strip() for t in text.split(",") if t.strip()]
    for ip in out:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"mDNS interface {ip!r}: expected an IP address") from None
    return out
