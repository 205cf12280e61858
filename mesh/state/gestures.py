"""Settled live gestures: the `settle` command. Pure.

A live gesture (mesh/node/live.py) moves parameters without touching the
log; when it ends, its origin node proposes one `settle` carrying each key's
final value. Applied, it is one revision and one change group: one history
record per key, carrying the gesture id and the origin's last live sequence
number the values cover (`gesture_seq`: every node's live table drops
in-flight live values of that origin at or below it), and one undo step
whose before-values are the keys' values when the gesture began (nothing
wrote them through the log while it was live). It is an explicit decision,
like an undo: no last-writer-wins skip.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from mesh.state.commands import Meta, Settle

if TYPE_CHECKING:
    from mesh.state.model import HanaState


def op_settle(state: HanaState, body: Settle, meta: Meta) -> dict[str, Any]:
    state._begin()
    history = state.history
    for op in body.ops:
        state._put(op.key, op.value, meta)
        history[-1] = dataclasses.replace(history[-1], gesture=body.gesture, gesture_seq=body.seq)
    state._finish(meta, "settle", undoable=True, audit=None)
    keys = [op.key for op in body.ops]
    return {"revision": state.revision, "gesture": body.gesture, "keys": keys[:32], "key_count": len(keys)}
