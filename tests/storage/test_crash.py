"""Crash tests: real processes killed with SIGKILL, torn tails and flipped
bytes. Every case is either repaired (a torn tail at the very end) or
refused with `StorageCorruption`; nothing is ever read back wrong."""

from __future__ import annotations

import hashlib
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mesh.raft.messages import ConfState, Entry, HardState
from mesh.storage.disk import DiskStorage
from mesh.storage.errors import StorageCorruption, StorageLocked
from mesh.storage.memory import MemoryStorage
from tests.storage.crash_child import size_for, snap_data
from tests.storage.helpers import dump, entry, payload

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("crash_child.py")
KILLS = int(os.environ.get("HANA_STORAGE_KILLS", "30"))
CASES = int(os.environ.get("HANA_STORAGE_CASES", "60"))
DEADLINE = 30.0


class Child:
    """A child process whose stdout is read line by line with deadlines."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=self._stderr, cwd=ROOT, bufsize=0
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = b""
        self._eof = False
        self.stderr_path = stderr_path

    def readline(self, timeout: float = DEADLINE) -> str | None:
        """The next complete line, or None at end of output."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self._eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"child printed no line within {timeout}s; stderr: {self.stderr()}")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    self._eof = True
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def kill(self) -> None:
        """SIGKILL (by pid) and reap; the remaining output stays readable."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE)
        self._stderr.close()

    def rest(self) -> list[str]:
        """Every complete line still unread (after the child died)."""
        out = []
        while (line := self.readline()) is not None:
            out.append(line)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return out

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:]


class Acked:
    """What the killed children acknowledged, and the checks it implies."""

    def __init__(self) -> None:
        self.terms: dict[int, int] = {}
        self.last = 0
        self.commit = 0
        self.term = 0
        self.snap = 0

    def ack(self, line: str) -> None:
        kind, *fields = line.split()
        if kind == "ready":
            return
        assert kind == "ack", line
        first, last, term, commit, snap = map(int, fields)
        assert first > self.commit or first > commit, f"child truncated committed entries: {line}"
        for i in [i for i in self.terms if i >= first]:
            del self.terms[i]
        self.terms.update(dict.fromkeys(range(first, last + 1), term))
        self.last, self.term = last, term
        self.commit = max(self.commit, commit)
        self.snap = max(self.snap, snap)

    def verify(self, store: DiskStorage) -> None:
        hs = store.hard_state()
        assert hs.term >= self.term and hs.commit >= self.commit, (hs, self.term, self.commit)
        assert store.last_index() >= self.last, f"acknowledged up to {self.last}, found {store.last_index()}"
        snap = store.snapshot()
        assert snap.meta.index >= self.snap
        assert store.first_index() - 1 <= snap.meta.index
        if snap.meta.index:
            assert snap.data == snap_data(snap.meta.index, snap.meta.term)
            if snap.meta.index in self.terms and snap.meta.index <= self.commit:
                assert snap.meta.term == self.terms[snap.meta.index]
        first, last = store.first_index(), store.last_index()
        for e in store.entries(first, last + 1):
            assert e.term == store.term(e.index)
            assert e.data == payload(e.index, e.term, size_for(e.index, e.term)), f"entry {e.index} content"
            want = self.terms.get(e.index)
            if e.index <= self.commit:
                assert want is not None and e.term == want, f"committed entry {e.index}: {e.term} != {want}"
            elif e.index <= self.last:
                # An acknowledged, uncommitted entry may only have been
                # replaced by a newer leader's batch that became durable.
                assert want is not None and e.term >= want, f"entry {e.index}: {e.term} < acknowledged {want}"
        # From now on the store as verified is what the next child builds on.
        self.terms = {i: store.term(i) for i in range(first, last + 1)}


@pytest.mark.slow
def test_sigkill_while_appending(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("HANA_STORAGE_SEED", "20240601")))
    data = tmp_path / "data"
    acked = Acked()
    total_acks = ahead = 0
    for kill in range(KILLS):
        child = Child([str(CHILD), str(data), str(rng.randrange(1 << 30))], tmp_path / f"stderr-{kill}")
        try:
            line = child.readline()
            assert line is not None and line.startswith("ready"), f"{line!r}; stderr: {child.stderr()}"
            for _ in range(rng.randint(0, 25)):
                line = child.readline()
                assert line is not None, f"child died: {child.stderr()}"
                acked.ack(line)
                total_acks += 1
        finally:
            child.kill()
        for line in child.rest():
            acked.ack(line)
            total_acks += 1
        with DiskStorage(data) as store:
            ahead += store.last_index() > acked.last
            acked.verify(store)
    # (visible with -s) how often the kill left durable but unacknowledged writes
    print(f"{KILLS} kills, {total_acks} acknowledged batches, {ahead} times the store held more than acknowledged")
    assert total_acks >= KILLS


def test_second_process_cannot_open(tmp_path: Path) -> None:
    with DiskStorage(tmp_path / "d", durability="unsafe_no_fsync"):
        code = "import sys; from mesh.storage.disk import DiskStorage; DiskStorage(sys.argv[1])"
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, cwd=ROOT, timeout=DEADLINE
        )
        assert proc.returncode != 0
        assert b"StorageLocked" in proc.stderr and b"is locked by another store" in proc.stderr
        with pytest.raises(StorageLocked):
            DiskStorage(tmp_path / "d")
    DiskStorage(tmp_path / "d").close()


# -- damaged files -------------------------------------------------------------


def _log_state(store: DiskStorage | MemoryStorage) -> Any:
    d = dump(store)
    del d["hard_state"], d["initial_state"]
    d["conf"] = store.initial_state()[1]
    return d


def build_reference(path: Path) -> tuple[dict[str, Any], list[Any]]:
    """A store with several segments, truncations, a snapshot, compaction and
    hard state, synced after every write. Returns its final dump and every
    log state it went through (including each prefix of every batch)."""
    rng = random.Random(7)
    model = MemoryStorage()
    states: list[Any] = [_log_state(model)]
    with DiskStorage(path, durability="unsafe_no_fsync", segment_bytes=1024) as store:
        term = 1
        for step in range(60):
            last = store.last_index()
            if step % 9 == 8 and last > store.first_index() + 4:
                term += 1
                first = last - rng.randint(0, 3)
            else:
                first = last + 1
            batch = [entry(i, term, rng.randint(0, 60)) for i in range(first, first + rng.randint(1, 6))]
            for k in range(1, len(batch)):
                prefix = model.crash_image()
                prefix.append(batch[:k])
                states.append(_log_state(prefix))
            for s in (store, model):
                s.append(batch)
                s.set_hard_state(HardState(term, "n1", max(0, first - 1)))
            if step in (30, 50):
                idx = store.last_index() - 5
                for s in (store, model):
                    s.create_snapshot(idx, ConfState.of(["n1", "n2"], ["n3"]), f"snapshot at {idx}".encode() * 9)
                    s.sync()
                states.append(_log_state(model))
                for s in (store, model):
                    s.compact(idx - 2)
            for s in (store, model):
                s.sync()
            states.append(_log_state(model))
        assert len(os.listdir(path / "wal")) >= 4
        return dump(store), states


def _digest_tree(path: Path) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if name != "LOCK":
                out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[Any]]:
    path = tmp_path_factory.mktemp("reference") / "data"
    final, states = build_reference(path)
    return path, final, states


def test_truncated_last_segment_is_repaired_or_refused(
    reference: tuple[Path, dict[str, Any], list[Any]], tmp_path: Path
) -> None:
    path, final, states = reference
    last_segment = sorted(os.listdir(path / "wal"))[-1]
    size = (path / "wal" / last_segment).stat().st_size
    rng = random.Random(11)
    repaired = refused = 0
    for case in range(CASES):
        work = tmp_path / f"c{case}"
        shutil.copytree(path, work)
        cut = rng.randrange(size)
        os.truncate(work / "wal" / last_segment, cut)
        before = _digest_tree(work)
        try:
            store = DiskStorage(work, durability="unsafe_no_fsync", segment_bytes=1024)
        except StorageCorruption as exc:
            refused += 1
            assert _digest_tree(work) == before, "a refused open changed files"
            assert exc.path and str(work) in exc.path
            continue
        with store:
            repaired += 1
            # Term and vote live in the hard-state file; commit-only advances
            # are log records, so a cut log may recover an older commit.
            hs, want = store.hard_state(), final["hard_state"]
            assert (hs.term, hs.vote) == (want.term, want.vote)
            assert hs.commit <= want.commit and hs.commit <= store.last_index()
            got = _log_state(store)
            assert got in states, f"cut at {cut}: recovered a log state that never existed"
            # The repaired store works and reopens to the same state.
            store.append([entry(store.last_index() + 1, 99)])
            store.sync()
        with DiskStorage(work, durability="unsafe_no_fsync") as again:
            assert again.entries(again.last_index(), again.last_index() + 1) == [entry(again.last_index(), 99)]
        shutil.rmtree(work)
    assert repaired > CASES // 2, (repaired, refused)


def test_flipped_bytes_are_refused(reference: tuple[Path, dict[str, Any], list[Any]], tmp_path: Path) -> None:
    path, final, _ = reference
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != "LOCK")
    assert any(p.suffix == ".snap" for p in files) and any(p.name == "hardstate" for p in files)
    rng = random.Random(13)
    kinds: dict[str, int] = {}
    for case in range(CASES * 2):
        work = tmp_path / f"c{case}"
        shutil.copytree(path, work)
        victim = work / rng.choice(files).relative_to(path)
        data = bytearray(victim.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        victim.write_bytes(bytes(data))
        before = _digest_tree(work)
        try:
            with DiskStorage(work, durability="unsafe_no_fsync") as store:
                # Opening is only acceptable if the content is exactly right.
                assert dump(store) == final, f"flip at {victim}:{at} read back wrong data"
        except StorageCorruption as exc:
            assert _digest_tree(work) == before, "a refused open changed files"
            assert exc.path.startswith(str(work))
            kinds[victim.suffix or victim.name] = kinds.get(victim.suffix or victim.name, 0) + 1
        shutil.rmtree(work)
    assert {".wal", ".snap", "hardstate"} <= kinds.keys(), kinds


def test_missing_files_are_refused(reference: tuple[Path, dict[str, Any], list[Any]], tmp_path: Path) -> None:
    path, _, _ = reference
    segments = sorted(os.listdir(path / "wal"))
    victims = [
        f"wal/{segments[0]}",  # the first: its entries are in no other segment
        f"wal/{segments[len(segments) // 2]}",  # a gap in the sequence
        f"snap/{os.listdir(path / 'snap')[0]}",
        "hardstate",
    ]
    for n, victim in enumerate(victims):
        work = tmp_path / f"m{n}"
        shutil.copytree(path, work)
        (work / victim).unlink()
        with pytest.raises(StorageCorruption) as info:
            DiskStorage(work)
        assert str(work) in info.value.path, info.value


def test_flip_after_open_is_refused_on_read(tmp_path: Path) -> None:
    with DiskStorage(tmp_path, durability="unsafe_no_fsync", segment_bytes=512) as store:
        store.append([entry(i, 1, 40) for i in range(1, 40)])
        store.sync()
        seg = tmp_path / "wal" / sorted(os.listdir(tmp_path / "wal"))[0]
        data = bytearray(seg.read_bytes())
        data[-5] ^= 0x40
        seg.write_bytes(bytes(data))
        with pytest.raises(StorageCorruption) as info:
            store.entries(1, 40)
        assert info.value.path == str(seg) and info.value.offset is not None
        assert store.entries(30, 40) == [entry(i, 1, 40) for i in range(30, 40)]


def test_unused_entry_prefix_is_skipped(tmp_path: Path) -> None:
    # (the in-memory twin's rule: entries at/below the snapshot are covered)
    with DiskStorage(tmp_path, durability="unsafe_no_fsync") as store:
        store.append([Entry(i, 1, b"x") for i in range(1, 11)])
        store.create_snapshot(8, ConfState.of(["a"]), b"s")
        store.compact(8)
        store.append([Entry(i, 2, b"y") for i in range(5, 13)])
        assert store.first_index() == 9 and store.last_index() == 12
        assert store.term(8) == 1 and store.term(9) == 2
