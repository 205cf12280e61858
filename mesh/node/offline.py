"""Knowing that a node is cut off from its controller, and the node's event
log that watch streams read: sans-IO pieces of the node core (issue 14).

`Contact` remembers when this node last heard a controller, on the core's
injected clock: a leader hears itself on every tick (check-quorum makes a
leader cut off from a majority step down within an election timeout); a
follower hears the controller when a message of the leader it follows, in
its current term, arrives (appends and heartbeats), or an answer to a
forwarded write. `connected` is true while that happened within the
election timeout; `stale` (of a local read) is its negation.

`EventLog` is a bounded, numbered log of the typed messages a watch stream
sends besides change records: `{"type":"status","connected","leader"}` when
the node loses or regains its controller (or follows another one while
connected), `{"type":"outbox","id","key"|"keys","state","result"?}` as a
queued write moves, and `{"type":"conflict","id","key","component",
"status","critical"}` when a conflict opens or closes. A watcher remembers
the sequence number it has read up to (`EventLog.since`); a watcher that
falls more than `limit` events behind misses the oldest (status and fates
are also readable at `GET /v1/status`, `/v1/outbox` and `/v1/conflicts`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

DEFAULT_EVENT_LIMIT = 4096


class Contact:
    """When this node last heard a controller (monotonic seconds; None: never)."""

    __slots__ = ("heard", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.heard: float | None = None

    def hear(self, now: float) -> None:
        self.heard = now

    def connected(self, now: float) -> bool:
        return self.heard is not None and now - self.heard <= self.timeout

    def contact_ms(self, now: float) -> int | None:
        """Milliseconds since a controller was last heard (None: never)."""
        if self.heard is None:
            return None
        return max(0, round((now - self.heard) * 1000))


class EventLog:
    """Numbered typed messages for the watch streams (see the module doc)."""

    __slots__ = ("_events", "limit", "seq")

    def __init__(self, limit: int = DEFAULT_EVENT_LIMIT) -> None:
        self.limit = limit
        self.seq = 0
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=limit)

    def add(self, event: dict[str, Any]) -> None:
        self.seq += 1
        self._events.append((self.seq, event))

    def since(self, seq: int) -> list[tuple[int, dict[str, Any]]]:
        """The events numbered above `seq` still held, oldest first."""
        if seq >= self.seq:
            return []
        return [(n, e) for n, e in self._events if n > seq]


def event_matches(event: dict[str, Any], prefix: str) -> bool:
    """Whether a watch on `prefix` gets `event`: status messages go to every
    watch; outbox and conflict messages to the watches whose prefix covers
    one of their keys."""
    if not prefix or event.get("type") == "status":
        return True
    keys = event.get("keys")
    if isinstance(keys, list):
        return any(isinstance(k, str) and k.startswith(prefix) for k in keys)
    key = event.get("key")
    return isinstance(key, str) and key.startswith(prefix)
