"""`hana-node watch`: one line per change, that survives its node.

The watch remembers the last revision it printed. When its connection ends
(the node stopped, or stopped answering pings for HEARTBEAT seconds) it
says so on stderr and resumes on another member (the API addresses of the
members, learned from the status documents of the nodes it talks to) from
the next revision, so every change is printed exactly once and in order.
It gives up, exit status 2, when no member has answered for `give_up`
seconds; a revision no longer held anywhere it asks (410 compacted) ends it
with exit status 1, since changes would be missed.

Other messages of the watch (`{"type": "status", …}` when the node loses
or regains its controller, `outbox`, `conflict`) go to stderr as notes, or
to stdout with `--json` (every document as the API sent it).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from mesh.cli_tables import terminal_width, watch_line
from mesh.client import ApiError, MeshClient, Unreachable

HEARTBEAT = 2.0
CONNECT_TIMEOUT = 2.0
RETRY_PAUSE = 0.2
EXIT_GAVE_UP = 2
EXIT_MISSED = 1

ClientFactory = Callable[[str, float], MeshClient]


class Watcher:
    def __init__(
        self,
        make: ClientFactory,
        api: str,
        prefix: str,
        since: int | None,
        *,
        as_json: bool,
        give_up: float,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.make = make
        self.apis = [api]
        self.current = api
        self.prefix = prefix
        self.next_rev = since
        self.as_json = as_json
        self.give_up = give_up
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.width = None if as_json else terminal_width()
        self.live = False
        self.lost_at: float | None = None

    def note(self, text: str) -> None:
        print(f"watch: {text}", file=self.err, flush=True)

    def _learn(self, status: dict[str, Any]) -> None:
        """Remember every member's API address (the current one first)."""
        for m in status.get("members") or []:
            api = m.get("api")
            if isinstance(api, str) and api and api not in self.apis:
                self.apis.append(api)

    def _emit(self, doc: dict[str, Any]) -> None:
        kind = doc.get("type", "change")
        if kind == "change" and isinstance(doc.get("revision"), int):
            rev = doc["revision"]
            if self.next_rev is not None and rev < self.next_rev:
                # Never expected (the watch resumes at next_rev), never printed twice.
                self.note(f"{self.current} sent revision {rev} again; already printed, skipped")
                return
            text = orjson.dumps(doc).decode() if self.as_json else watch_line(doc, self.width)
            print(text, file=self.out, flush=True)
            self.next_rev = rev + 1
            return
        if self.as_json:
            print(orjson.dumps(doc).decode(), file=self.out, flush=True)
        elif kind == "status":
            state = "regained" if doc.get("connected") else "lost"
            self.note(f"{self.current} {state} its controller (leader {doc.get('leader') or 'none'})")
        elif kind in ("outbox", "conflict"):
            from mesh.cli_offline import notice_line

            self.note(f"{self.current}: {notice_line(doc)}")
        else:
            self.note(f"{self.current}: {orjson.dumps(doc).decode()}")

    async def _session(self, api: str) -> None:
        """Watch on `api` until its connection ends (raises)."""
        async with self.make(api, CONNECT_TIMEOUT) as c:
            status = await c.status()
            self._learn(status)
            if self.next_rev is None:
                self.next_rev = int(status.get("revision", 0)) + 1
            if self.lost_at is not None:
                self.note(f"resumed on {api} from revision {self.next_rev}")
            self.live = True
            self.lost_at = None
            async for doc in c.watch(self.prefix, self.next_rev, heartbeat=HEARTBEAT):
                self._emit(doc)

    def _next(self, api: str) -> str:
        i = self.apis.index(api) if api in self.apis else -1
        return self.apis[(i + 1) % len(self.apis)]

    async def run(self) -> int:
        api = self.current
        ever_live = False
        tried = 0
        while True:
            self.current = api
            self.live = False
            try:
                await self._session(api)
                reason = "the watch ended"
            except ApiError as exc:
                if exc.code == "compacted":
                    self.note(
                        f"{api} no longer holds revision {self.next_rev} ({exc}); changes would be "
                        "missed: start again without --since, or from the oldest revision held"
                    )
                    return EXIT_MISSED
                if exc.status in (401, 403):
                    self.note(f"{api} refused the watch: {exc}")
                    return EXIT_GAVE_UP
                reason = str(exc)
            except Unreachable as exc:
                reason = str(exc)
            now = time.monotonic()
            if self.live:
                ever_live = True
                tried = 0
                self.lost_at = now
                self.note(f"lost {api} ({reason}); reconnecting from revision {self.next_rev}")
            elif not ever_live:
                self.note(f"cannot watch on {api}: {reason}")
                return EXIT_GAVE_UP
            assert self.lost_at is not None
            if now - self.lost_at > self.give_up:
                self.note(
                    f"gave up: no member answered for {self.give_up:g} s (tried {', '.join(self.apis)}); "
                    f"the last revision printed is {(self.next_rev or 1) - 1}"
                )
                return EXIT_GAVE_UP
            tried += 1
            if tried >= len(self.apis):
                tried = 0
                await asyncio.sleep(RETRY_PAUSE)
            api = self._next(api)
