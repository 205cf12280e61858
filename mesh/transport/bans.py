"""Peers that keep failing authentication: counted per address, refused
for a while, and reported (issue 18).

`BanTable.failed(addr, trusted)` notes one failed handshake or frame from an
address; `ban_after` failures within `ban_seconds` ban it (the transport
closes the connection and refuses new ones, `refused(addr)`) for
`ban_seconds`, unless the address is trusted (authenticated traffic came
from it: several nodes can share one address). Bounded: at most
`max_addresses` addresses are tracked in each table (the least recently
failing, or the oldest ban, are forgotten first). Every ban is counted
(`bans_total`, metric hana_peer_bans_total; `banned()` the bans in force,
hana_peer_banned) and queued as a `security_event` command ("peer_banned",
the address, the failures) that the node proposes, so that every node's
audit trail records it (`take_events`, at most `max_events` held; beyond
that they are counted in `events_dropped`).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol


class BanConfig(Protocol):
    ban_after: int
    ban_seconds: float


class BanTable:
    def __init__(
        self,
        cfg: BanConfig,
        max_addresses: int = 4096,
        max_events: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg  # read at each call: a test may lower ban_after on a running transport
        self.max_addresses = max_addresses
        self.max_events = max_events
        self.clock = clock
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.until: OrderedDict[str, float] = OrderedDict()  # address -> monotonic end of its ban
        self.bans_total = 0
        self.events_dropped = 0
        self._events: list[dict[str, Any]] = []

    def refused(self, addr: str) -> bool:
        """Whether `addr` is banned now (an expired ban is forgotten)."""
        end = self.until.get(addr)
        if end is None:
            return False
        if end > self.clock():
            return True
        del self.until[addr]
        return False

    def failed(self, addr: str, trusted: bool = False) -> bool:
        """Note one failure from `addr`; True if that banned it."""
        now = self.clock()
        window = self.failures.pop(addr, None) or deque()
        window.append(now)
        while window and now - window[0] > self.cfg.ban_seconds:
            window.popleft()
        self.failures[addr] = window
        while len(self.failures) > self.max_addresses:
            self.failures.popitem(last=False)
        if len(window) < self.cfg.ban_after or trusted:
            return False
        count = len(window)
        window.clear()
        self.until.pop(addr, None)
        self.until[addr] = now + self.cfg.ban_seconds
        while len(self.until) > self.max_addresses:
            self.until.popitem(last=False)
        self.bans_total += 1
        if len(self._events) < self.max_events:
            self._events.append(
                {
                    "op": "security_event",
                    "event": "peer_banned",
                    "address": addr[:256],
                    "count": count,
                    "path": "peer",
                    "author": "unknown",
                }
            )
        else:
            self.events_dropped += 1
        return True

    def banned(self) -> int:
        """Bans in force now."""
        now = self.clock()
        return sum(1 for end in self.until.values() if end > now)

    def take_events(self) -> list[dict[str, Any]]:
        """The security events to propose now (and forget them)."""
        events, self._events = self._events, []
        return events
