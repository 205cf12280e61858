"""Transcript tests for the Raft core, after etcd raft's interaction tests.

A transcript (tests/raft/testdata/*.txt) is a sequence of blocks:

    # comments (kept as they are)
    command arg key=value
    ----
    output lines
    <blank line>

`run_transcript` executes every command against a fresh `Cluster` and
renders the file again with the actual output; the test compares that text
with the file. With `pytest --rewrite` (or HANA_REWRITE=1) the file is
rewritten instead, to be reviewed as a git diff.

Commands (node ids are strings, "1", "2", ...):

    add-nodes N [voters=(1,2,3)] [learners=(4)] [election-tick=10]
              [heartbeat-tick=1] [pre-vote=true] [check-quorum=true]
              [max-inflight=256] [max-msg-bytes=N]
        Create N nodes with the next ids. Nodes named in voters/learners get
        the bootstrap entry; others start empty (to be added later). Without
        voters= on an empty cluster, all N nodes are bootstrapped as voters.
    campaign N                      start an election on N now
    connection-lost N peer          N's transport saw peer close its connections
                                    (Raft's leader_connection_lost)
    tick N [count]                  tick N `count` times (default 1)
    tick-election N                 tick until N's election timer fires (its
                                    randomized timeout; election-tick for a leader)
    tick-heartbeat N                tick until N's heartbeat timer fires
    propose N data [data...]        propose entries on N (several: one batch)
    propose-conf-change N type node add_voter|add_learner|promote_learner|
                                    demote_voter|remove_node
    transfer-leadership from=N to=M
    read-index N ctx
    process-ready N [nosync]        handle one Ready of N; with nosync, write it
                                    without syncing and stop there (nothing is
                                    sent, applied or advanced until `sync N`)
    sync N                          finish a Ready left by `process-ready nosync`
    deliver-msgs [type=app] N...    step the messages in flight to N
    deliver-msgs drop=(N,...)       drop every message in flight to those nodes
    drop-msgs [from=N] [to=N] [type=T]
    msgs                            list the messages in flight
    stabilize [N...]                handle Readies and deliver messages among the
                                    given nodes (default all) until nothing moves
    isolate N / partition (1,2) (3,4,5) / heal
    crash N / restart N             restart from MemoryStorage.crash_image()
    wipe N [voters=(1,2,3)]         restart N with an empty store (its data
                                    directory deleted), bootstrapped again with
                                    the given voters (as --peers does) or empty
    compact N index                 snapshot N's state machine at index, compact
    status N / raft-log N / state   inspect
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageDecodeError,
    ProposalDropped,
    Ready,
    Role,
    Snapshot,
)

from .cluster import Cluster, Handled, NodeOptions, sm_snapshot

MAX_ROUNDS = 500

# -- formatting ---------------------------------------------------------------


def fmt_data(data: bytes) -> str:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data.hex()
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fmt_ids(ids: tuple[str, ...] | list[str]) -> str:
    return "(" + ",".join(ids) + ")"


def fmt_conf(conf: ConfState) -> str:
    out = f"voters={fmt_ids(conf.voters)}"
    if conf.learners:
        out += f" learners={fmt_ids(conf.learners)}"
    return out


def fmt_entry(e: Entry) -> str:
    head = f"{e.term}/{e.index}"
    if e.type == EntryType.CONF_CHANGE:
        try:
            cc = ConfChange.decode(e.data)
        except MessageDecodeError:
            return f"{head} conf<undecodable>"
        if cc.type == ConfChangeType.BOOTSTRAP and cc.conf is not None:
            return f"{head} conf bootstrap {fmt_conf(cc.conf)}"
        return f"{head} conf {cc.type} {cc.node}"
    return f"{head} {fmt_data(e.data)}"


def fmt_entries(ents: list[Entry]) -> str:
    if len(ents) > 8:
        shown = [fmt_entry(e) for e in ents[:3]] + [f"...{len(ents) - 5} more..."]
        shown += [fmt_entry(e) for e in ents[-2:]]
    else:
        shown = [fmt_entry(e) for e in ents]
    return "[" + ", ".join(shown) + "]"


def fmt_snapshot(s: Snapshot) -> str:
    return f"index={s.meta.index} term={s.meta.term} {fmt_conf(s.meta.conf)}"


def fmt_msg(m: Message) -> str:
    parts = [f"{m.frm}->{m.to} {m.type} term={m.term}"]
    if m.index:
        parts.append(f"index={m.index}")
    if m.log_term:
        parts.append(f"log_term={m.log_term}")
    if m.commit:
        parts.append(f"commit={m.commit}")
    if m.reject:
        parts.append("rejected" + (f" hint={m.reject_hint}" if m.type in ("app_resp", "heartbeat_resp") else ""))
    if m.entries:
        parts.append(f"entries={fmt_entries(m.entries)}")
    if m.snapshot is not None:
        parts.append(f"snapshot=({fmt_snapshot(m.snapshot)})")
    if m.context:
        parts.append(f"ctx={fmt_data(m.context)}")
    return " ".join(parts)


def fmt_ready(h: Handled) -> list[str]:
    rd: Ready = h.ready
    out = [f"> {h.node} handling Ready{' (sync)' if rd.must_sync else ''}"]
    if rd.soft_state is not None:
        out.append(f"  lead={rd.soft_state.leader or 'none'} role={rd.soft_state.role}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        out.append(f"  hs term={hs.term} vote={hs.vote or 'none'} commit={hs.commit}")
    if rd.snapshot is not None:
        out.append(f"  snapshot {fmt_snapshot(rd.snapshot)}")
    if rd.entries:
        out.append(f"  entries {fmt_entries(rd.entries)}")
    if rd.committed_entries:
        out.append(f"  committed {fmt_entries(rd.committed_entries)}")
    if rd.conf_state is not None:
        out.append(f"  conf {fmt_conf(rd.conf_state)}")
    for rs in rd.read_states:
        out.append(f"  read-state ctx={fmt_data(rs.context)} index={rs.index}")
    for lost in rd.lost_logs:
        out.append(f"  follower-lost-log {lost.node} match={lost.match} hint={lost.hint}")
    lines = []
    for i, m in enumerate(rd.messages):
        lost = f" DROPPED ({h.dropped[i]})" if i in h.dropped else ""
        lines.append(f"  {fmt_msg(m)}{lost}")
    out += collapse(lines)
    return out


def collapse(lines: list[str]) -> list[str]:
    """Identical lines (a burst of heartbeats) printed once, with a count."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    return [line if n == 1 else f"{line} (x{n})" for line, n in counts.items()]


# -- transcript files -----------------------------------------------------------


@dataclass
class Block:
    prefix: list[str]  # comment and blank lines before the command
    command: str
    expected: list[str]


def parse_transcript(text: str) -> tuple[list[Block], list[str]]:
    lines = text.splitlines()
    blocks: list[Block] = []
    prefix: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            prefix.append(line)
            i += 1
            continue
        command = line
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise ValueError(f"line {i}: expected ---- after command {command!r}")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        i += 1  # the blank line that ends the output
        blocks.append(Block(prefix, command, expected))
        prefix = []
    return blocks, prefix


def render_transcript(blocks: list[Block], outputs: list[list[str]], trailer: list[str]) -> str:
    lines: list[str] = []
    for b, out in zip(blocks, outputs, strict=True):
        lines.extend(b.prefix)
        lines.append(b.command)
        lines.append("----")
        lines.extend(out or ["ok"])
        lines.append("")
    lines.extend(trailer)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n"


def run_transcript(path: Path) -> tuple[str, str]:
    """(file text, text rendered with the actual outputs)."""
    text = path.read_text()
    blocks, trailer = parse_transcript(text)
    h = Harness()
    outputs: list[list[str]] = []
    for b in blocks:
        try:
            out = h.run(b.command)
        except Exception as exc:  # shown in the trace, so a change is reviewed
            out = [f"error: {type(exc).__name__}: {exc}"]
        outputs.append(out)
    return text, render_transcript(blocks, outputs, trailer)


# -- the commands ------------------------------------------------------------------


def parse_ids(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("(") and value.endswith(")"):
        value = value[1:-1]
    return [v for v in value.split(",") if v]


def parse_bool(value: str) -> bool:
    if value not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value == "true"


class Harness:
    def __init__(self) -> None:
        self.c = Cluster()
        self.commands: dict[str, Callable[[list[str], dict[str, str]], list[str]]] = {
            "add-nodes": self.cmd_add_nodes,
            "campaign": self.cmd_campaign,
            "connection-lost": self.cmd_connection_lost,
            "tick": self.cmd_tick,
            "tick-election": self.cmd_tick_election,
            "tick-heartbeat": self.cmd_tick_heartbeat,
            "propose": self.cmd_propose,
            "propose-conf-change": self.cmd_propose_conf_change,
            "transfer-leadership": self.cmd_transfer,
            "read-index": self.cmd_read_index,
            "process-ready": self.cmd_process_ready,
            "sync": self.cmd_sync,
            "deliver-msgs": self.cmd_deliver,
            "drop-msgs": self.cmd_drop,
            "msgs": self.cmd_msgs,
            "stabilize": self.cmd_stabilize,
            "isolate": self.cmd_isolate,
            "partition": self.cmd_partition,
            "heal": self.cmd_heal,
            "crash": self.cmd_crash,
            "restart": self.cmd_restart,
            "wipe": self.cmd_wipe,
            "compact": self.cmd_compact,
            "status": self.cmd_status,
            "raft-log": self.cmd_raft_log,
            "state": self.cmd_state,
        }

    def run(self, command: str) -> list[str]:
        words = shlex.split(command)
        name, rest = words[0], words[1:]
        args = [w for w in rest if "=" not in w or w.startswith('"')]
        kwargs = dict(w.split("=", 1) for w in rest if "=" in w and not w.startswith('"'))
        fn = self.commands.get(name)
        if fn is None:
            raise ValueError(f"unknown command {name!r}")
        before = self._roles()
        out = fn(args, kwargs)
        if name not in ("stabilize", "process-ready", "sync"):
            out = out + self._transitions(before)
        return out

    def _roles(self) -> dict[str, tuple[Role, int, str | None]]:
        return {n.id: (n.raw.raft.role, n.raw.raft.term, n.raw.raft.lead) for n in self.c.up()}

    def _transitions(self, before: dict[str, tuple[Role, int, str | None]]) -> list[str]:
        out = []
        for nid, (role, term, lead) in sorted(self._roles().items()):
            old = before.get(nid)
            if old is not None and old != (role, term, lead):
                out.append(f"{nid} is {role} at term {term} (lead={lead or 'none'})")
        return out

    def node(self, nid: str) -> str:
        if nid not in self.c.nodes:
            raise ValueError(f"no node {nid}")
        if self.c.nodes[nid].down:
            raise ValueError(f"node {nid} is down")
        return nid

    # -- setup

    def cmd_add_nodes(self, args: list[str], kw: dict[str, str]) -> list[str]:
        count = int(args[0])
        start = len(self.c.nodes) + 1
        ids = [str(i) for i in range(start, start + count)]
        opts = NodeOptions(
            election_tick=int(kw.get("election-tick", 10)),
            heartbeat_tick=int(kw.get("heartbeat-tick", 1)),
            pre_vote=parse_bool(kw.get("pre-vote", "true")),
            check_quorum=parse_bool(kw.get("check-quorum", "true")),
            max_inflight=int(kw.get("max-inflight", 256)),
            max_msg_bytes=int(kw.get("max-msg-bytes", 1 << 20)),
        )
        voters = parse_ids(kw["voters"]) if "voters" in kw else ids if not self.c.nodes else []
        learners = parse_ids(kw.get("learners", ""))
        conf = ConfState.of(voters, learners)
        out = []
        for nid in ids:
            member = nid in voters or nid in learners
            self.c.add_node(nid, opts, conf if member else None)
            if member:
                # Apply the committed bootstrap entry now: every transcript
                # would otherwise start with the same Readies.
                while self.c.has_ready(nid):
                    self.c.handle_ready(nid)
                out.append(f"{nid}: bootstrapped {fmt_conf(conf)}, applied 1")
            else:
                out.append(f"{nid}: empty (not yet a member)")
        return out

    # -- inputs

    def cmd_campaign(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.c.nodes[self.node(args[0])].raw.campaign()
        return []

    def cmd_connection_lost(self, args: list[str], kw: dict[str, str]) -> list[str]:
        raft = self.c.nodes[self.node(args[0])].raw.raft
        acted = raft.leader_connection_lost(args[1])
        if not acted:
            return ["ignored"]
        if raft.lost_leader_wait:
            return [f"forgot the leader; campaigns in {raft.lost_leader_wait} ticks"]
        if raft.role == Role.PRE_CANDIDATE:
            return ["forgot the leader; campaigns now"]
        return ["forgot the leader; granted a pre-vote, leaves the campaign to that voter"]

    def _tick(self, nid: str, n: int) -> None:
        for _ in range(n):
            self.c.nodes[nid].raw.tick()

    def cmd_tick(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self._tick(self.node(args[0]), int(args[1]) if len(args) > 1 else 1)
        return []

    def cmd_tick_election(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = self.node(args[0])
        r = self.c.nodes[nid].raw.raft
        if r.role == Role.LEADER:
            n = r.cfg.election_tick - r.election_elapsed
        else:
            n = r.randomized_election_timeout - r.election_elapsed
        n = max(n, 1)
        self._tick(nid, n)
        return [f"ticked {n}"]

    def cmd_tick_heartbeat(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = self.node(args[0])
        r = self.c.nodes[nid].raw.raft
        n = max(r.cfg.heartbeat_tick - r.heartbeat_elapsed, 1)
        self._tick(nid, n)
        return [f"ticked {n}"]

    def cmd_propose(self, args: list[str], kw: dict[str, str]) -> list[str]:
        raw = self.c.nodes[self.node(args[0])].raw
        datas = [a.encode() for a in args[1:]]
        try:
            idx = [raw.propose(datas[0])] if len(datas) == 1 else raw.propose_batch(datas)
        except ProposalDropped as exc:
            return [f"dropped: {exc.reason}"]
        return [f"index {', '.join(map(str, idx))}"]

    def cmd_propose_conf_change(self, args: list[str], kw: dict[str, str]) -> list[str]:
        raw = self.c.nodes[self.node(args[0])].raw
        cc = ConfChange(ConfChangeType(args[1]), args[2])
        try:
            idx = raw.propose_conf_change(cc)
        except ProposalDropped as exc:
            return [f"dropped: {exc.reason}"]
        return [f"index {idx}"]

    def cmd_transfer(self, args: list[str], kw: dict[str, str]) -> list[str]:
        raw = self.c.nodes[self.node(kw["from"])].raw
        try:
            raw.transfer_leader(kw["to"])
        except ProposalDropped as exc:
            return [f"dropped: {exc.reason}"]
        return []

    def cmd_read_index(self, args: list[str], kw: dict[str, str]) -> list[str]:
        raw = self.c.nodes[self.node(args[0])].raw
        try:
            raw.read_index(args[1].encode())
        except ProposalDropped as exc:
            return [f"dropped: {exc.reason}"]
        return []

    # -- the Ready loop and the network

    def cmd_process_ready(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = self.node(args[0])
        if not self.c.has_ready(nid):
            return ["no Ready"]
        self.c.persist(nid)
        if "nosync" in args[1:]:
            rd = self.c.nodes[nid].outstanding
            assert rd is not None
            out = fmt_ready(Handled(nid, rd, []))
            out[0] = f"> {nid} writing Ready WITHOUT sync (held: nothing sent, applied or advanced)"
            return out
        return fmt_ready(self.c.finish(nid))

    def cmd_sync(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = self.node(args[0])
        if self.c.nodes[nid].outstanding is None:
            return ["nothing held"]
        h = self.c.finish(nid)
        return [f"> {nid} synced: {len(h.ready.messages)} message(s) sent, {len(h.applied)} entries applied"]

    def _deliver_to(self, nid: str, mtype: str | None, quiet: bool) -> list[str]:
        out: list[str] = []
        msgs = self.c.take(nid)
        keep = [m for m in msgs if mtype is not None and m.type != mtype]
        msgs = [m for m in msgs if mtype is None or m.type == mtype]
        self.c.inflight.extend(keep)
        if msgs and not quiet:
            out.append(f"> {nid} receiving messages")
        for m in msgs:
            why = self.c.deliver(m)
            if why:
                out.append(f"  {fmt_msg(m)} DROPPED ({why})")
            elif not quiet:
                out.append(f"  {fmt_msg(m)}")
        return collapse(out)

    def cmd_deliver(self, args: list[str], kw: dict[str, str]) -> list[str]:
        if "drop" in kw:
            out = []
            for nid in parse_ids(kw["drop"]):
                for m in self.c.take(nid):
                    out.append(f"dropped {fmt_msg(m)}")
            return out or ["nothing to drop"]
        out = []
        for nid in args:
            out += self._deliver_to(nid, kw.get("type"), quiet=False)
        return out or ["no messages"]

    def cmd_drop(self, args: list[str], kw: dict[str, str]) -> list[str]:
        out, keep = [], []
        for m in self.c.inflight:
            if (
                kw.get("from", m.frm) == m.frm
                and kw.get("to", m.to) == m.to
                and kw.get("type", str(m.type)) == str(m.type)
            ):
                out.append(f"dropped {fmt_msg(m)}")
            else:
                keep.append(m)
        self.c.inflight = keep
        return out or ["nothing to drop"]

    def cmd_msgs(self, args: list[str], kw: dict[str, str]) -> list[str]:
        return [fmt_msg(m) for m in self.c.inflight] or ["no messages"]

    def cmd_stabilize(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nodes = args or sorted(self.c.nodes, key=int)
        out: list[str] = []
        for _ in range(MAX_ROUNDS):
            moved = False
            for nid in nodes:
                if self.c.has_ready(nid):
                    out += fmt_ready(self.c.handle_ready(nid))
                    moved = True
            for nid in nodes:
                if any(m.to == nid for m in self.c.inflight):
                    out += self._deliver_to(nid, None, quiet=True)
                    moved = True
            if not moved:
                return out
        raise RuntimeError(f"stabilize: still moving after {MAX_ROUNDS} rounds")

    def cmd_isolate(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.c.isolate(self.node(args[0]))
        return []

    def cmd_partition(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.c.partition([parse_ids(a) for a in args])
        return []

    def cmd_heal(self, args: list[str], kw: dict[str, str]) -> list[str]:
        self.c.heal()
        return []

    def cmd_crash(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = self.node(args[0])
        lost = self.c.nodes[nid].storage.unsynced()
        self.c.crash(nid)
        # Its connections die with it: messages on their way to it are lost.
        dropped = len(self.c.take(nid))
        return [f"{nid} crashed ({lost} unsynced write(s) lost, {dropped} message(s) to it dropped)"]

    def cmd_restart(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = args[0]
        # Messages sent to it while it was down were lost on the way.
        self.c.take(nid)
        self.c.restart(nid)
        r = self.c.nodes[nid].raw.raft
        return [
            f"{nid} restarted: term={r.term} vote={r.vote or 'none'} commit={r.log.committed} "
            f"first={r.log.first_index()} last={r.log.last_index()}"
        ]

    def cmd_wipe(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = args[0]
        if nid not in self.c.nodes:
            raise ValueError(f"no node {nid}")
        conf = ConfState.of(parse_ids(kw["voters"]), parse_ids(kw.get("learners", ""))) if "voters" in kw else None
        self.c.take(nid)
        self.c.wipe(nid, conf)
        r = self.c.nodes[nid].raw.raft
        return [
            f"{nid} wiped and restarted: term={r.term} vote={r.vote or 'none'} commit={r.log.committed} "
            f"first={r.log.first_index()} last={r.log.last_index()}"
        ]

    def cmd_compact(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = self.node(args[0])
        index = int(args[1])
        node = self.c.nodes[nid]
        if index > node.applied_index:
            raise ValueError(f"{nid} has applied only up to {node.applied_index}")
        conf = node.raw.raft.conf_state_at(index)
        snap = node.storage.create_snapshot(index, conf, sm_snapshot(node.applied, index))
        node.storage.compact(index)
        node.storage.sync()
        return [f"{nid} snapshot {fmt_snapshot(snap)}; log now starts at {node.storage.first_index()}"]

    # -- inspection

    def cmd_status(self, args: list[str], kw: dict[str, str]) -> list[str]:
        st = self.c.nodes[self.node(args[0])].raw.raft.status()
        conf = st["conf"]
        assert isinstance(conf, dict)
        out = [
            f"{st['id']}: {st['role']} term={st['term']} vote={st['vote'] or 'none'} lead={st['leader'] or 'none'} "
            f"commit={st['commit']} applied={st['applied']} last={st['last_index']} "
            + fmt_conf(ConfState.of(conf["voters"], conf["learners"]))
        ]
        if st["lead_transferee"]:
            out.append(f"  transferring to {st['lead_transferee']}")
        progress = st["progress"]
        assert isinstance(progress, dict)
        for pid in sorted(progress, key=int):
            p = progress[pid]
            learner = " learner" if p["learner"] else ""
            active = "" if p["recent_active"] else " inactive"
            out.append(f"  {pid}: {p['state']} match={p['match']} next={p['next']}{learner}{active}")
        return out

    def cmd_raft_log(self, args: list[str], kw: dict[str, str]) -> list[str]:
        nid = self.node(args[0])
        log = self.c.nodes[nid].raw.raft.log
        out = []
        first = log.first_index()
        if first > 1:
            out.append(f"(compacted up to {first - 1}, term {log.term(first - 1)})")
        for e in log.all_entries():
            mark = "" if e.index <= log.committed else "  (uncommitted)"
            out.append(fmt_entry(e) + mark)
        return out or ["(empty log)"]

    def cmd_state(self, args: list[str], kw: dict[str, str]) -> list[str]:
        out = []
        for nid in sorted(self.c.nodes, key=int):
            n = self.c.nodes[nid]
            if n.down:
                out.append(f"{nid}: down")
                continue
            r = n.raw.raft
            out.append(
                f"{nid}: {'learner' if r.is_learner() else r.role} term={r.term} lead={r.lead or 'none'} "
                f"commit={r.log.committed} last={r.log.last_index()} applied={n.applied_index}"
            )
        return out
