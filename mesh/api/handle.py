"""What the API needs from a node: the one boundary between mesh/api and the
node below it.

Handlers reach the node only through `NodeHandle` (no attribute probing, no
reaching into a transport or a replica), so that the type checker sees every
use and the API can be tested against a fake. The value types here are the
API's: a node hands over its membership as `MembersView` and takes a change
as `MembershipChange`. The composition root (`mesh.adapter.NodeAdapter`)
implements the protocol over a running node; mesh/api never imports
mesh/node and mesh/node never imports mesh/api or aiohttp.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from mesh.state.kv import ChangeRecord
from mesh.state.model import HanaState

# What `POST /v1/members` may ask for.
MembershipAction = Literal["add_learner", "add_voter", "promote", "demote", "remove"]
MEMBERSHIP_ACTIONS: tuple[MembershipAction, ...] = get_args(MembershipAction)


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """One membership change asked for through the API. Who asked (`author`,
    the identity's name), from where (`address`, the client's) and why
    (`reason`) travel with it into the audit trail of every node. `raft` is
    where to dial the node (host, port) when it is joining and discovery has
    not found it; the node uses it only once the change is accepted."""

    node: str
    action: MembershipAction
    author: str
    address: str
    reason: str = "by hand"
    raft: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as `GET /v1/members` shows it: its `GET /v1/status` entry,
    how it was found, how far its log is behind the controller's (`lag`, in
    entries; None where unknown) and whether it is `healthy` (None off the
    controller, which alone hears every member). `found`: "self",
    "static" (--peers), "mdns", or "config" (known only from the Raft
    configuration)."""

    id: str
    raft: str | None
    api: str | None
    voter: bool
    role: str
    match_index: int | None
    last_contact_ms: float | None
    found: str
    lag: int | None
    healthy: bool | None


@dataclass(frozen=True, slots=True)
class DiscoveredView:
    """A node that discovery sees and that is not a member."""

    id: str
    raft: str
    api: str | None
    found: str
    state: str


@dataclass(frozen=True, slots=True)
class MembersView:
    """The data of `GET /v1/members`, as the node sees it now."""

    leader: str | None
    term: int
    members: tuple[MemberView, ...]
    discovered: tuple[DiscoveredView, ...]


class LiveValues(Protocol):
    """What the API reads of a live update (mesh.node.live.LiveUpdate)."""

    @property
    def values(self) -> dict[str, Any]: ...

    @property
    def gesture(self) -> str | None: ...

    @property
    def source(self) -> str: ...

    @property
    def seq(self) -> int: ...


class LiveStream(Protocol):
    """A live subscription as the API sees it (mesh.node.live.LiveSubscription):
    an async iterator of live updates that `close()` ends."""

    def __aiter__(self) -> AsyncIterator[LiveValues]: ...

    def close(self) -> None: ...


class NodeHandle(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def cluster(self) -> str: ...

    @property
    def kv(self) -> HanaState:
        """The local replica of the state (read it after `read_barrier`)."""
        ...

    def status(self) -> dict[str, Any]:
        """The `GET /v1/status` document (each member with its "found")."""
        ...

    async def read_barrier(self, linearizable: bool) -> None:
        """Return once local state may serve a read of that consistency:
        for linearizable, after a ReadIndex round confirmed leadership and
        the state machine caught up (raises NoLeader / Timeout)."""
        ...

    async def propose(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit a state-machine command (forwarded to the controller if
        this node is not it) and return its result once applied here.
        Raises NoLeader (nothing committed) or Timeout (outcome unknown)."""
        ...

    def watch(self, prefix: str, since: int) -> AsyncIterator[ChangeRecord]:
        """Change records with revision >= since under prefix, in revision
        order, without gaps or duplicates, live. Raises Gone if `since` is
        older than the retained history."""
        ...

    def watch_events(self, prefix: str, since: int) -> AsyncIterator[dict[str, Any]]:
        """A watch stream's messages: change records as dicts with
        `"type": "change"` (as `watch`), and the typed messages of the node
        logged while it runs: `{"type":"status","connected","leader"}`,
        `{"type":"outbox",…}`, `{"type":"conflict",…}` (those with keys only
        when a key is under prefix)."""
        ...

    async def propose_offline(self, command: dict[str, Any]) -> dict[str, Any]:
        """A write with `?offline=queue` (checked with `kv.prepare`): the
        state machine's result as `propose` gives it when a controller is
        heard within --offline-wait; else the write is kept in the node's
        durable outbox and the answer is `{"queued": id, "key"|"keys",
        "base_version"|"base_versions", "outbox": n}`."""
        ...

    def outbox(self) -> dict[str, Any]:
        """`GET /v1/outbox`: `{"items":[{"id","key"|"keys","op","state","made",
        "base_version"|"base_versions","result"?}…],"queued": n}`."""
        ...

    def outbox_overlay(self, prefix: str) -> dict[str, tuple[str, Any]]:
        """This node's queued (not final) writes under prefix: per key the
        last one, ("put", value) or ("delete", None)."""
        ...

    def connected(self) -> bool:
        """This node heard a controller within the election timeout."""
        ...

    def controller_contact_ms(self) -> int | None:
        """Milliseconds since this node last heard a controller (None: never)."""
        ...

    def metrics_text(self) -> bytes:
        """Prometheus exposition text."""
        ...

    def live_set(self, values: dict[str, Any], *, gesture: str | None, author: str, role: str = "operator") -> None:
        """Publish live values (shared/API.md "Live parameters"): validated
        like a write of each key (raises `mesh.state.errors.StateError`,
        which the API answers as a 400-class error), then sent to every
        subscriber on every node; committed once the gesture settles."""
        ...

    def live_check(self, values: dict[str, Any], *, gesture: str | None, author: str, role: str = "operator") -> None:
        """The checks of `live_set` without publishing (raises StateError)."""
        ...

    def live_end(self, gesture: str, *, author: str) -> None:
        """End `author`'s gesture `gesture` now (it settles at once)."""
        ...

    def live_subscribe(self, prefix: str) -> LiveStream:
        """Live values under `prefix` as they arrive (an async iterator of
        `LiveUpdate`, bounded, coalescing per key; `close()` it)."""
        ...

    def members(self) -> MembersView:
        """The members with how each was found, its lag and health, and the
        discovered nodes that are not members."""
        ...

    def api_address(self, node_id: str) -> str | None:
        """The API address ("host:port") of `node_id` as this node knows it
        (its own, a peer's from its handshake or from discovery), or None."""
        ...

    async def change_membership(self, change: MembershipChange) -> dict[str, Any]:
        """Propose `change` on the controller and return `{"index", "term",
        "conf"}` once it is committed and applied here. A joining node's
        `raft` address is dialled once the change is accepted (also when
        its outcome is unknown), never after a refusal; an existing member
        keeps the address it has. Raises NotLeader (with `leader`) on a
        follower, Conflict (`membership_refused`) if the controller refuses
        it, NoLeader or Timeout (outcome unknown)."""
        ...
