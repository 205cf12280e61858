"""The outbox's records and file (issue 14): CRC-framed, fsynced appends that
survive a reopen; a torn tail cut and logged like the WAL's; damage in the
middle refused with what to do; bounded reading; compaction; ids unique
across restarts; fates from the state machine's answers."""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import pytest

from mesh.node.outbox import (
    MAX_FRAME,
    MemoryOutboxStore,
    Outbox,
    OutboxCorrupt,
    decode_frames,
    encode_frame,
    fate_of,
)
from mesh.node.outbox_file import FILE_NAME, FileOutboxStore


def put(key: str, value: Any) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, "author": "a", "made": "000000000000001.000000.n"}


def test_queued_writes_survive_a_reopen_with_their_fates(tmp_path: Path) -> None:
    store = FileOutboxStore(tmp_path, "n1")
    box = Outbox("n1", store, "inc1")
    a = box.queue(put("parameters/a", 1), ["parameters/a"], "000000000000001.000000.n1", {"parameters/a": 3})
    b = box.queue(put("parameters/b", 2), ["parameters/b"], "000000000000002.000000.n1", {})
    box.settle(a, {"key": "parameters/a", "version": 4, "revision": 9})
    store.close()  # as kill -9 would leave it: every append was fsynced
    again = Outbox("n1", FileOutboxStore(tmp_path, "n1"), "other")
    assert again.inc == "inc1"  # the incarnation of the file, not of this life
    assert [(i.id, i.state) for i in again.items.values()] == [(a.id, "applied"), (b.id, "queued")]
    assert again.items[a.seq].result == {"key": "parameters/a", "version": 4, "revision": 9}
    assert again.items[b.seq].rid == f"ob.n1.inc1.{b.seq}" and again.count() == 1
    c = again.queue(put("parameters/c", 3), ["parameters/c"], "000000000000003.000000.n1", {})
    assert c.id == "n1.3"  # unique across restarts
    view = again.view()
    assert view["queued"] == 2 and view["items"][0] == {
        "id": "n1.1",
        "key": "parameters/a",
        "op": "put",
        "state": "applied",
        "made": "000000000000001.000000.n1",
        "base_version": 3,
        "result": {"key": "parameters/a", "version": 4, "revision": 9},
    }


@pytest.mark.parametrize("damage", ["cut_mid_frame", "cut_mid_header", "bad_crc_last", "zero_tail"])
def test_a_torn_tail_is_cut_and_logged(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    store = FileOutboxStore(tmp_path, "n1")
    box = Outbox("n1", store, "inc")
    box.queue(put("parameters/a", 1), ["parameters/a"], "000000000000001.000000.n1", {})
    box.queue(put("parameters/b", 2), ["parameters/b"], "000000000000002.000000.n1", {})
    store.close()
    path = tmp_path / FILE_NAME
    data = path.read_bytes()
    last = len(data) - len(encode_frame(store_records(path)[-1]))
    if damage == "cut_mid_frame":
        data = data[:-5]
    elif damage == "cut_mid_header":
        data = data[: last + 3]
    elif damage == "bad_crc_last":
        data = data[:-1] + bytes([data[-1] ^ 0xFF])
    else:
        data = data[:last] + b"\0" * 40
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="mesh.node"):
        again = Outbox("n1", FileOutboxStore(tmp_path, "n1"), "inc")
    assert [i.id for i in again.items.values()] == ["n1.1"]
    assert "event=outbox_torn_tail" in caplog.text
    assert path.stat().st_size == last  # cut where the valid frames end
    # It goes on appending after the cut.
    again.queue(put("parameters/c", 3), ["parameters/c"], "000000000000003.000000.n1", {})
    assert [i.id for i in Outbox("n1", FileOutboxStore(tmp_path, "n1"), "inc").items.values()] == ["n1.1", "n1.2"]


def store_records(path: Path) -> list[dict[str, Any]]:
    return decode_frames(path.read_bytes()).records


def test_damage_in_the_middle_is_refused_with_what_to_do(tmp_path: Path) -> None:
    store = FileOutboxStore(tmp_path, "n1")
    box = Outbox("n1", store, "inc")
    for i in range(3):
        box.queue(put(f"parameters/k{i}", i), [f"parameters/k{i}"], f"00000000000000{i}.000000.n1", {})
    store.close()
    path = tmp_path / FILE_NAME
    data = bytearray(path.read_bytes())
    first = len(encode_frame(store_records(path)[0]))
    data[first + 12] ^= 0xFF  # inside the second record's payload
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(OutboxCorrupt, match="move it aside"):
        Outbox("n1", FileOutboxStore(tmp_path, "n1"), "inc")
    assert path.read_bytes() == before  # nothing cut: nothing changed


def test_a_frame_length_is_checked_before_its_payload_is_read() -> None:
    good = encode_frame({"t": "meta", "inc": "x", "next": 1})
    huge = struct.pack(">II", MAX_FRAME + 1, 0)
    assert decode_frames(good + huge).torn.startswith("frame length")
    with pytest.raises(OutboxCorrupt):
        decode_frames(good + huge + good)
    with pytest.raises(ValueError):
        encode_frame({"big": "x" * (MAX_FRAME + 1)})


def test_compaction_keeps_what_is_held(tmp_path: Path) -> None:
    store = FileOutboxStore(tmp_path, "n1")
    box = Outbox("n1", store, "inc", keep_final=2)
    for i in range(700):
        item = box.queue(put("parameters/k", i), ["parameters/k"], "000000000000001.000000.n1", {})
        box.settle(item, {"key": "parameters/k", "revision": i, "superseded": True})
    pending = box.queue(put("parameters/k", -1), ["parameters/k"], "000000000000001.000000.n1", {})
    store.close()
    again = Outbox("n1", FileOutboxStore(tmp_path, "n1"), "inc", keep_final=2)
    assert [i.id for i in again.items.values()] == ["n1.699", "n1.700", pending.id]
    assert (tmp_path / FILE_NAME).stat().st_size < 200_000
    assert again.next == 702


def test_fates_from_the_state_machines_answers() -> None:
    assert fate_of({"key": "k", "version": 2, "revision": 5})[0] == "applied"
    assert fate_of({"key": "k", "revision": 5, "superseded": True, "current": None})[0] == "superseded"
    txn = {"revision": 5, "results": [{"key": "a", "superseded": True}, {"key": "b", "superseded": True}]}
    assert fate_of(txn)[0] == "superseded"
    assert fate_of({"revision": 5, "results": [{"key": "a", "superseded": True}, {"key": "b"}]})[0] == "applied"
    state, shown = fate_of({"error": {"code": "conflict_kept", "conflict_id": 7, "message": "m"}})
    assert state == "conflict" and shown["conflict"] == 7
    assert fate_of({"error": {"code": "not_found", "message": "m"}})[0] == "rejected"


def test_memory_store_twin_keeps_records_across_a_restart() -> None:
    store = MemoryOutboxStore()
    box = Outbox("n2", store, "i")
    box.queue(put("parameters/a", 1), ["parameters/a"], "000000000000001.000000.n2", {})
    assert [i.id for i in Outbox("n2", store, "j").items.values()] == ["n2.1"]
