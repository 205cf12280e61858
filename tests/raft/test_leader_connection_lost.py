"""Issue 17: a follower whose transport saw the leader close its connections
campaigns at once (`Raft.leader_connection_lost`). The transcript
tests/raft/testdata/leader_connection_lost.txt shows the message flow of the
main cases; these tests check the outcomes around it: the turns of the
remaining voters, what is ignored, and that a healthy leader keeps its term.
"""

from __future__ import annotations

from mesh.raft import ConfState, Role

from .cluster import Cluster, NodeOptions

OPTS = NodeOptions(election_tick=10, heartbeat_tick=1)


def mesh(voters: list[str], learners: tuple[str, ...] = (), opts: NodeOptions = OPTS) -> Cluster:
    """A cluster whose first voter leads (term 2)."""
    conf = ConfState.of(voters, list(learners))
    c = Cluster()
    for nid in [*voters, *learners]:
        c.add_node(nid, opts, conf)
    c.nodes[voters[0]].raw.campaign()
    c.settle()
    assert c.nodes[voters[0]].raw.role == Role.LEADER
    return c


def leader_of(c: Cluster) -> list[tuple[str, int]]:
    return [(n.id, n.raw.term) for n in c.up() if n.raw.role == Role.LEADER]


def test_crash_of_the_leader_elects_the_first_remaining_voter_in_one_term() -> None:
    c = mesh(["1", "2", "3", "4", "5"])
    c.crash("1")
    for nid in ("5", "3", "2", "4"):  # the order they notice in does not matter
        assert c.nodes[nid].raw.leader_connection_lost("1")
    assert c.nodes["2"].raw.role == Role.PRE_CANDIDATE
    assert [c.nodes[n].raw.raft.lost_leader_wait for n in ("3", "4", "5")] == [2, 4, 6]
    c.settle()
    # One election, no split vote, no tick needed.
    assert leader_of(c) == [("2", 3)]
    assert c.nodes["2"].raw.campaign_cause == "connection_lost"
    assert c.nodes["2"].raw.connection_lost_campaigns == 1
    # The others' turns are void: ticking them (short of an election timeout)
    # starts no campaign and leaves the term alone.
    for nid in ("3", "4", "5"):
        for _ in range(6):
            c.nodes[nid].raw.tick()
        assert c.nodes[nid].raw.raft.lost_leader_wait == 0
    c.settle()
    assert leader_of(c) == [("2", 3)]
    assert all(c.nodes[n].raw.connection_lost_campaigns == 0 for n in ("3", "4", "5"))


def test_the_next_voter_takes_its_turn_when_the_first_does_not_campaign() -> None:
    # 1 leads and crashes; 2 (first of the rest) is partitioned away and never
    # hears of it: 3 campaigns after its turn of two ticks, and wins.
    c = mesh(["1", "2", "3", "4", "5"])
    c.crash("1")
    c.isolate("2")
    for nid in ("3", "4", "5"):
        assert c.nodes[nid].raw.leader_connection_lost("1")
    c.settle()
    assert leader_of(c) == []
    c.nodes["3"].raw.tick()
    assert c.nodes["3"].raw.role == Role.FOLLOWER
    c.nodes["3"].raw.tick()
    assert c.nodes["3"].raw.role == Role.PRE_CANDIDATE
    c.settle()
    assert leader_of(c) == [("3", 3)]
    assert c.nodes["3"].raw.campaign_cause == "connection_lost"
    # 4 and 5 granted 3's pre-vote: no turn of theirs is left.
    assert c.nodes["4"].raw.raft.lost_leader_wait == 0
    assert c.nodes["5"].raw.raft.lost_leader_wait == 0


def test_a_deliberate_close_by_a_healthy_leader_does_not_depose_it() -> None:
    # Every follower but one still hears the leader: the pre-vote of the one
    # that saw a connection close fails, and the leader keeps its term.
    c = mesh(["1", "2", "3", "4", "5"])
    for nid in ("2", "3"):
        assert c.nodes[nid].raw.leader_connection_lost("1")
    c.settle()
    assert c.nodes["2"].raw.role == Role.PRE_CANDIDATE
    # 3 granted it (it forgot the leader too), which voids 3's own turn; 4
    # and 5 are in the lease and drop it: two of five, no majority.
    for _ in range(2):
        c.nodes["3"].raw.tick()
    c.settle()
    assert leader_of(c) == [("1", 2)]
    assert all(n.raw.term == 2 for n in c.up())
    # The next heartbeat brings both back.
    c.nodes["1"].raw.tick()
    c.settle()
    assert [(n.id, n.raw.role, n.raw.lead) for n in c.up()] == [
        ("1", Role.LEADER, "1"),
        ("2", Role.FOLLOWER, "1"),
        ("3", Role.FOLLOWER, "1"),
        ("4", Role.FOLLOWER, "1"),
        ("5", Role.FOLLOWER, "1"),
    ]


def test_a_request_kept_in_the_lease_is_forgotten_once_the_leader_is_heard() -> None:
    # 3 drops 2's pre-vote while in 1's lease (and keeps it); a heartbeat
    # from 1 comes next, so when 1 really crashes later 3 must not grant that
    # stale request (2 is a follower again by then): 3 takes its own turn.
    c = mesh(["1", "2", "3"])
    assert c.nodes["2"].raw.leader_connection_lost("1")
    c.settle()
    assert "2" in c.nodes["3"].raw.raft._lease_dropped
    c.nodes["1"].raw.tick()
    c.settle()
    assert c.nodes["2"].raw.role == Role.FOLLOWER
    c.crash("1")
    assert c.nodes["3"].raw.leader_connection_lost("1")
    assert c.nodes["3"].raw.raft.lost_leader_wait == 2
    assert c.nodes["3"].raw.raft.msgs == []


def test_what_is_ignored() -> None:
    c = mesh(["1", "2", "3"], learners=("4",))
    # A peer that is not the leader; the leader itself; a learner.
    assert not c.nodes["2"].raw.leader_connection_lost("3")
    assert not c.nodes["1"].raw.leader_connection_lost("1")
    assert not c.nodes["1"].raw.leader_connection_lost("2")
    assert not c.nodes["4"].raw.leader_connection_lost("1")
    assert c.nodes["4"].raw.lead == "1"
    # Without pre-vote a campaign would bump the term of a healthy leader's
    # followers: the fast path is off.
    c2 = mesh(["1", "2", "3"], opts=NodeOptions(election_tick=10, heartbeat_tick=1, pre_vote=False))
    assert not c2.nodes["2"].raw.leader_connection_lost("1")
    assert c2.nodes["2"].raw.lead == "1"


def test_a_pre_vote_dropped_in_the_lease_is_granted_when_the_lease_runs_out() -> None:
    # An isolated leader (no connection closes: a pulled cable, a paused
    # process) costs an election timeout. The first follower to time out
    # asks 3, whose timer runs a tick behind: still in the lease, 3 drops
    # the request. When 3's lease runs out a tick later it grants it then,
    # instead of leaving 2 to wait for its next timeout (or for 3's own).
    c = mesh(["1", "2", "3"])
    c.isolate("1")
    r2, r3 = c.nodes["2"].raw.raft, c.nodes["3"].raw.raft
    for _ in range(r3.cfg.election_tick - 1):
        c.nodes["3"].raw.tick()
    while r2.role == Role.FOLLOWER:
        c.nodes["2"].raw.tick()
    assert r2.campaign_cause == "election_timeout"
    c.settle()
    assert r2.role == Role.PRE_CANDIDATE and r3.role == Role.FOLLOWER and r3.lead == "1"
    c.nodes["3"].raw.tick()  # the lease ends
    c.settle()
    assert leader_of(c) == [("1", 2), ("2", 3)]  # 1 is cut off and does not know yet
    assert r3.lead == "2" and r3.campaign_cause == ""


def test_the_next_voter_campaigns_at_once_when_the_first_is_behind_and_needs_it() -> None:
    # 2 (first of the remaining voters 2, 3) missed the last entries (it
    # restarted, say) when 1 crashes. 3 refuses its pre-vote for its log;
    # with three voters 2 cannot win without 3, so 3 campaigns at once
    # instead of after its turn of two ticks: no tick passes.
    c = mesh(["1", "2", "3"])
    c.isolate("2")
    for i in range(3):
        c.nodes["1"].raw.propose(f"v{i}".encode())
    c.settle()
    c.heal()
    c.crash("1")
    assert c.nodes["3"].raw.last_index > c.nodes["2"].raw.last_index
    assert c.nodes["2"].raw.leader_connection_lost("1")
    assert c.nodes["3"].raw.leader_connection_lost("1")
    c.settle()
    assert leader_of(c) == [("3", 3)]
    assert c.nodes["3"].raw.campaign_cause == "connection_lost"


def test_with_five_voters_the_next_one_keeps_its_turn() -> None:
    # Five voters: 2 (behind 3 only) may still win with 4 and 5, so 3 waits
    # for its turn rather than split the vote.
    c = mesh(["1", "2", "3", "4", "5"])
    c.partition([["1", "3"], ["2"], ["4"], ["5"]])
    c.nodes["1"].raw.propose(b"only-3-has-it")
    c.settle()
    c.heal()
    c.crash("1")
    for nid in ("2", "3", "4", "5"):
        assert c.nodes[nid].raw.leader_connection_lost("1")
    c.settle()
    # 2 won with 4 and 5 (its log is as recent as theirs); 3 refused it and
    # did not campaign on top.
    assert leader_of(c) == [("2", 3)]
    assert c.nodes["3"].raw.connection_lost_campaigns == 0
