"""`hana-node serve --osc-listen/--osc-send` as a real process (mesh/launcher):
its flags checked before anything binds, and one node bridging OSC both
ways, with /v1/osc, OSCQuery and /metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from pythonosc.udp_client import SimpleUDPClient

from mesh.cli import build_parser
from mesh.node.flags import CliError
from mesh.osc.service import OscOptions
from mesh.serve import osc_options
from tests.integration.harness import eventually, running_cluster
from tests.osc.kit import Receiver, fader

SERVE = ["serve", "--id", "t", "--peers", "t=127.0.0.1:7071", "--no-mdns"]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--osc-listen", "nowhere"], "--osc-listen: expected HOST:PORT"),
        (["--osc-listen", "127.0.0.1:99999"], "--osc-listen: port 99999 out of range"),
        (["--osc-send", "127.0.0.1:0"], "port 0 is not an address to send to"),
        (["--osc-send", "127.0.0.1:9000,127.0.0.1:9000"], "listed twice"),
        (["--osc-send", ","], "--osc-send: expected HOST:PORT"),
        (["--oscquery-port", "8000"], "--oscquery-port needs --osc-listen"),
        (["--osc-listen", "127.0.0.1:0", "--oscquery-port", "70000"], "--oscquery-port 70000 out of range"),
    ],
)
def test_bad_osc_flags_are_refused(flags: list[str], says: str) -> None:
    with pytest.raises(CliError, match=re.escape(says)):
        osc_options(build_parser().parse_args([*SERVE, *flags]))


def test_good_osc_flags() -> None:
    args = build_parser().parse_args(
        [*SERVE, "--osc-listen", "0.0.0.0:9000", "--osc-send", "a:1, b:2", "--settle-ms", "90"]
    )
    assert osc_options(args) == OscOptions(("0.0.0.0", 9000), (("a", 1), ("b", 2)), 0, 90.0)
    assert osc_options(build_parser().parse_args(SERVE)) is None


def test_a_bad_osc_flag_stops_serve_before_anything_is_written(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mesh.cli", *SERVE, "--data-dir", str(tmp_path / "t"), "--oscquery-port", "8000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "hana-node serve: --oscquery-port needs --osc-listen" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
@pytest.mark.integration
async def test_a_serve_process_bridges_osc_both_ways(tmp_path: Path) -> None:
    rx = await Receiver().start()
    try:
        with running_cluster(tmp_path, 1) as c:
            c.start("n1", ["--osc-listen", "127.0.0.1:0", "--osc-send", f"127.0.0.1:{rx.port}"])
            await c.wait_leader()
            async with c.nodes["n1"].client() as api:
                await api.put(*fader("fader", "parameters/level", out_min=0, out_max=10))
                osc = await eventually(lambda: api.request("GET", "/v1/osc"), 10, "GET /v1/osc")
                assert [m["address"] for m in osc["mappings"]] == ["/fader"]
                host, port = osc["listen"].rsplit(":", 1)
                client = SimpleUDPClient(host, int(port))
                for i in range(1, 11):
                    client.send_message("/fader", i / 10)
                client.send_message("/fader", "loud")  # wrong type: dropped, counted

                async def settled() -> bool:
                    doc = await api.get("parameters/level")
                    return bool(doc["value"] == 10.0)

                await eventually(settled, 10, "the gesture to settle")
                await rx.wait_for(lambda got: ("/fader", (1.0,)) in got)
                metrics = await api.raw("GET", "/metrics")
                assert b'hana_osc_packets_total{result="ok"} 10.0' in metrics
                assert b'hana_osc_packets_total{result="bad"} 1.0' in metrics
                async with aiohttp.ClientSession() as s, s.get(f"http://{osc['oscquery']}/?HOST_INFO") as r:
                    info = await r.json()
                assert info["OSC_PORT"] == int(port) and info["OSC_TRANSPORT"] == "UDP"
            assert c.terminate("n1") == 0
            log = c.nodes["n1"].log_tail(20_000)
            assert "event=osc_listening" in log and "event=oscquery_listening" in log
            assert "result=bad" in log and "event=oscquery_not_advertised reason=no_mdns" in log
    finally:
        rx.close()
