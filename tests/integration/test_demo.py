"""`hana-node demo` then `hana-node status`, as a new user would run them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


# The SIGTERM run repeats the SIGINT one with another signal: only in the full suite.
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_demo_then_status_then_ctrl_c_stops_everything(stop_signal: signal.Signals) -> None:
    env = dict(os.environ, HANA_MDNS_INTERFACES="127.0.0.1", PYTHONUNBUFFERED="1")
    demo = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "demo", "--nodes", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    child_pids: list[int] = []
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops the mesh" in line:
                break
        text = "".join(lines)
        apis = re.findall(r"api http://(127\.0\.0\.1:\d+)\s+pid (\d+)", text)
        assert len(apis) == 3, text
        child_pids = [int(pid) for _, pid in apis]
        put = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "put", "displays/left-wall", '{"brightness": 0.8}', "--api", apis[2][0]],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert put.returncode == 0, put.stderr
        status = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "status", "--api", apis[0][0]],
            capture_output=True, text=True, timeout=30, env={**env, "COLUMNS": "200"},
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        for nid in ("node1", "node2", "node3"):
            assert nid in status.stdout
        assert status.stdout.count("leader") >= 2  # the header and the leader's row
        as_json = subprocess.run(
            [sys.executable, "-m", "mesh.cli", "status", "--json", "--api", apis[1][0]],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert '"commit_index"' in as_json.stdout
    finally:
        demo.send_signal(stop_signal)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
        for pid in child_pids:
            # Every node the demo started is gone (reaped by the demo).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"demo left node pid {pid} running")
