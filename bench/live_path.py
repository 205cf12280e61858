"""The live path's own Python work per value, without sockets or processes.

    python bench/live_path.py [--params 64] [--ticks 3000]

What a fader's tick costs in mesh/node/live.py and the live frame codec,
measured in one process (so the figure does not move with the load of a
shared machine the way the CPU of bench/live.py's nodes does): a set of
`--params` keys, as the WebSocket handler gets it (JSON text), through a
source's `LiveTable.set` (one peer wants the keys, one does not, a local
subscriber watches other keys), the frame to the peer encoded and decoded
(MAC included), the subscriber's `LiveTable.receive`, its sink's `take`
and the WebSocket document's encode. Prints microseconds per value of
each part. For an A/B, run it with PYTHONPATH pointing at each tree, from
outside the repository. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

# Not bench/ first (its mesh.py would shadow the package); the repository
# last, so that PYTHONPATH (the tree to measure) wins.
sys.path.pop(0)
sys.path.append(str(Path(__file__).resolve().parents[1]))

from mesh.clock import ManualClock
from mesh.node.live import LiveSink, LiveTable
from mesh.state.model import HanaState
from mesh.transport.codec import FrameDecoder, LiveFrame, LiveInterest, encode_message


class Wire:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, m: Any) -> None:
        self.sent.append(m)


def table(nid: str, peers: list[str], clock: ManualClock, wire: Wire) -> LiveTable:
    return LiveTable(
        nid,
        clock,
        wire,  # type: ignore[arg-type]
        HanaState(),
        peers=lambda: peers,
        leader=lambda: None,
        propose=lambda c: None,  # type: ignore[arg-type,return-value]
        settle_ms=3_600_000,
    )


def run(params: int, ticks: int) -> tuple[float, float, float, int]:
    """(µs per value at the source, on the wire, at the subscriber; values
    the subscriber's sink handed on)."""
    clock = ManualClock()
    wa, wb = Wire(), Wire()
    a, b = table("a", ["b", "c"], clock, wa), table("b", ["a", "c"], clock, wb)
    a.receive_interest(LiveInterest("a", "b", ("parameters/bench/",)))
    a.receive_interest(LiveInterest("a", "c", ()))
    a.add_sink(LiveSink("settings/none/", lambda: None))
    sub = LiveSink("parameters/bench/", lambda: None)
    b.add_sink(sub)
    keys = [f"parameters/bench/live/p{i}" for i in range(params)]
    secret, cluster = b"s" * 32, "hana"
    decoder = FrameDecoder(secret, cluster)
    texts = [orjson.dumps({"set": dict.fromkeys(keys, i + 0.5), "gesture": "bench"}) for i in range(ticks)]
    warm = ticks // 10
    spent = [0.0, 0.0, 0.0]
    delivered = 0
    for tick, text in enumerate(texts):
        clock.advance(1 / 120)
        t0 = time.perf_counter()
        msg = orjson.loads(text)
        a.set(msg["set"], msg["gesture"], author="bench")
        t1 = time.perf_counter()
        frames, wa.sent = wa.sent, []
        (frame,) = [f for f in frames if isinstance(f, LiveFrame) and f.to == "b"]
        decoder.feed(encode_message(secret, cluster, tick + 1, frame))
        got = decoder.next_frame()
        assert got is not None
        m = got.message()
        t2 = time.perf_counter()
        b.receive(m)  # type: ignore[arg-type]
        for update in sub.take():
            delivered += len(update.values)
            doc: dict[str, Any] = {"type": "live", "values": update.values}
            if update.gesture is not None:
                doc["gesture"] = update.gesture
            doc["source"], doc["seq"] = update.source, update.seq
            orjson.dumps(doc)
        t3 = time.perf_counter()
        if tick >= warm:
            spent[0] += t1 - t0
            spent[1] += t2 - t1
            spent[2] += t3 - t2
    n = (ticks - warm) * params
    return spent[0] * 1e6 / n, spent[1] * 1e6 / n, spent[2] * 1e6 / n, delivered


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=int, default=64)
    p.add_argument("--ticks", type=int, default=3000)
    args = p.parse_args()
    src, wire, sub, _ = run(args.params, args.ticks)
    print(
        f"us per value ({args.params} per set): source set {src:.2f}, frame encode+decode {wire:.2f}, "
        f"subscriber receive+deliver {sub:.2f}, total {src + wire + sub:.2f}"
    )


if __name__ == "__main__":
    main()
