"""Bounds on what may enter the replicated state (shared/API.md, "Additions").

One set of numbers for the API (which refuses early, with the right status)
and the state machine (which refuses identically on every node, whatever
reached the log). Changing one of these changes what every node accepts:
every node of a mesh must run the same values.
"""

from __future__ import annotations

# A value (JSON) nested deeper than this is refused (`too_deep`, 400). A
# scalar has depth 0, `[]` and `{}` depth 1. The state's own structures add a
# few levels on top of a value (at most about 12 in a snapshot), far below
# the 254 levels orjson can encode.
MAX_DEPTH = 64
# One key's value, encoded as compact JSON (`too_large`, 413).
MAX_VALUE_BYTES = 1 << 20
# One encoded command (a Raft entry's payload). Base64 in a peer frame it
# stays far below the 64 MiB frame limit.
MAX_COMMAND_BYTES = 16 << 20
# One save (its data, encoded): a little under a command, so that every save
# can be exported and imported back.
MAX_SAVE_BYTES = MAX_COMMAND_BYTES - (1 << 20)
# One request body at the API, unless a flag raises it.
DEFAULT_MAX_BODY = 4 << 20

# Identity fields that travel in every command (author, node, role) and a
# request id: short strings.
MAX_NAME_CHARS = 256
MAX_RID_CHARS = 128
MAX_SAVE_NAME = 128
MAX_TXN_OPS = 1024
# Error messages and text fields echoed into results are cut to this many
# characters: a result is remembered (request ids) and must stay small.
MAX_MESSAGE_CHARS = 400
# A security event's free-text fields.
MAX_EVENT_ADDRESS = 256
MAX_EVENT_PATH = 2048
