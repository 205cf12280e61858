"""The history file of a chaos run: what every client did, which faults were
injected when, and what role each node had over time.

One JSON object per line (`history.jsonl` in the run's output folder), each
with a "type". Times are seconds since the run started (monotonic clock of
the chaos process), as floats.

- `{"type":"meta", "seed", "nodes":[ids], "duration", "started_at" (ISO
  wall-clock time), "args":{…}}`: first line.
- `{"type":"op", "id", "client", "node", "kind", "key", "keys", "value",
  "expected_version", "invoke", "complete", "outcome", "status", "error",
  "result"}`: one client operation.
  kind: "put", "delete", "txn", "read" (linearizable), "read_local", "list"
  (linearizable prefix read). `key` is the key (None for txn/list, which use
  `keys`). `complete` is None and outcome "unknown" when the client saw no
  answer it can trust (timeout, 504, connection dropped mid-request); then
  the write may or may not have happened. outcome "ok" (2xx), "fail"
  (a definite refusal that changed nothing: 400/404/409/503) with `status`
  and the error `code` in `error`. `result` is the JSON answer of a 2xx.
- `{"type":"fault", "id", "kind", "nodes":[ids], "detail", "start", "end"}`:
  one injected fault, active from start to end (end None: until the run's
  end). kind: "kill", "pause", "partition", "asymmetric", "bridge",
  "isolate_leader", "latency", "loss", "membership", "torn_tail".
- `{"type":"role", "t", "node", "role", "term", "leader"}`: a node's role as
  polled from /v1/status; role "down" when the process is not running,
  "unreachable" when it did not answer.
- `{"type":"watch", "id", "node", "prefix", "since", "start", "end",
  "events":[{"revision","key","op","value"}…], "error"}`: one watch session
  (a WebSocket on one node, from `since`), with every event it delivered in
  arrival order. The watcher resumes the next session after the last
  revision it saw, usually on another node.
- `{"type":"final", "node", "revision", "applied_index", "digest", "items":
  {key: {"value","version","mod_revision"}}, "records":[history records]}`:
  each node's state after the faults stopped and the mesh converged.
- `{"type":"hostile", "kind", "n", "node", "start", "end", "outcome",
  "status", "code", "detail"}`: one attempt of a hostile neighbour
  (`--hostile`, see hostile.py for the kinds and outcomes).
- `{"type":"scan", "node", "items", "records", "audit", "members",
  "dropped_frames", "error"}`: with `--hostile`, each node's whole state,
  change history, audit trail and member list at the end, which the
  checker searches for the hostile marker.
- `{"type":"offline", "node", "outbox", "conflicts", "items", "records",
  "error"}`: with offline writers (`--offline-clients`), each node's outbox,
  conflicts and state and history under offline.MANUAL_PREFIX at the end;
  offline writes are `op` records with `"offline": true` (outcome
  "queued" when answered 202) and resolves `op` records of kind "resolve"
  (see offline.py).
- `{"type":"anomaly", "check", "detail"}`: written by the checker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

RECORD_TYPES = frozenset({"meta", "op", "fault", "role", "watch", "final", "hostile", "scan", "offline", "anomaly"})


class HistoryWriter:
    """Appends records to a history file, one line each, flushed as written so
    that a run that crashes still leaves what it recorded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        if record.get("type") not in RECORD_TYPES:
            raise ValueError(f"unknown history record type {record.get('type')!r}")
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_history(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a history file, in order; a bad line is an error."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(record, dict) or record.get("type") not in RECORD_TYPES:
                raise ValueError(f"{path}:{lineno}: not a history record")
            yield record


def by_type(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in RECORD_TYPES}
    for r in records:
        out[r["type"]].append(r)
    return out
