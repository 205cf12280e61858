"""Size and depth limits shared by the API, the state machine and the peer
side (INTERFACES.md section 2)."""

from __future__ import annotations

# JSON nesting of a value.
MAX_DEPTH = 64
# One key's encoded value.
MAX_VALUE_BYTES = 1 << 20
# One encoded command: a Raft entry carrying it, base64 in a peer frame,
# stays far under the 64 MiB frame limit.
MAX_COMMAND_BYTES = 16 << 20
# One request body, unless a flag raises it.
DEFAULT_MAX_BODY = 4 << 20
