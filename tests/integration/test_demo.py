"""`hana-node demo` as a new user runs it: the banner's commands work when
pasted, a killed node is reported while the others keep running, `r NODE`
restarts it and it catches up, Ctrl-C stops everything, the data is
temporary unless --keep, and a second `demo --keep` resumes the state."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.kit import Lines

pytestmark = pytest.mark.integration

NODE_LINE = r"  (node\d)  api http://(127\.0\.0\.1:\d+)  pid (\d+)  log "


class DemoRun:
    """One `hana-node demo` process, its output read line by line, driven
    through its stdin; every node it started is checked gone at the end."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.env = dict(env or os.environ, HANA_MDNS_INTERFACES="127.0.0.1", PYTHONUNBUFFERED="1",
                        HANA_NO_BROWSER="1")  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mesh.cli", "demo", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, text=True,
        )  # fmt: skip
        self.out = Lines(self.proc.stdout)
        self.out.wait_for("Ctrl-C stops the mesh", timeout=90)
        self.banner = self.out.text()
        self.nodes = {m[0]: (m[1], int(m[2])) for m in re.findall(NODE_LINE, self.banner)}

    def api(self, nid: str) -> str:
        return self.nodes[nid][0]

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def pasted(self, verb: str) -> str:
        """The banner's suggested command for `verb`, as printed."""
        m = re.search(rf"^  (\S.* {verb} .*)$", self.banner, re.M)
        assert m, self.banner
        return m.group(1)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        pids = [pid for _, pid in self.nodes.values()]
        pids += [int(p) for p in re.findall(r"restarted \(pid (\d+)\)", self.out.text())]
        for pid in pids:
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
        return rc


@pytest.fixture
def runs() -> Iterator[list[DemoRun]]:
    started: list[DemoRun] = []
    yield started
    for run in started:
        run.stop()


def sh(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command as a person pastes it into a shell, elsewhere than the repository."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def until_ok(command: str, cwd: Path, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout
    while True:
        out = sh(command, cwd, env)
        if out.returncode == 0 or time.monotonic() > deadline:
            assert out.returncode == 0, (command, out.stdout, out.stderr)
            return out
        time.sleep(0.3)


@pytest.mark.slow
def test_kill_a_node_restart_it_from_the_demo_and_see_it_catch_up(runs: list[DemoRun], tmp_path: Path) -> None:
    demo = DemoRun()
    runs.append(demo)
    assert len(demo.nodes) == 3, demo.banner
    assert f"Status page: http://{demo.api('node1')}/" in demo.banner
    data = re.search(r"^Data: (\S+) \(temporary: deleted when the demo stops", demo.banner, re.M)
    assert data, demo.banner
    # The banner's commands, pasted in a shell elsewhere whose PATH has no hana-node.
    env = {k: v for k, v in demo.env.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin", "COLUMNS": "80"}
    put = demo.pasted("put")
    assert not put.startswith("hana-node "), put
    until_ok(put, tmp_path, env)
    got = sh(demo.pasted("get") + " --json", tmp_path, env)
    assert got.returncode == 0 and '"brightness": 0.8' in got.stdout, got.stdout + got.stderr
    status = until_ok(demo.pasted("status"), tmp_path, env)
    assert all(nid in status.stdout for nid in ("node1", "node2", "node3")) and "healthy" in status.stdout
    assert sh(demo.pasted("history"), tmp_path, env).returncode == 0
    hana = shlex.split(demo.pasted("status"))[:-3]  # the hana-node command the banner uses
    victim_api, victim_pid = demo.nodes["node3"]
    os.kill(victim_pid, signal.SIGKILL)
    demo.out.wait_for(r"demo: node3 exited \(killed by SIGKILL; .*a majority: the mesh keeps accepting writes", 10)
    # The others keep going: write while node3 is down.
    until_ok(shlex.join([*hana, "put", "displays/while-down", '{"n": 1}', "--api", demo.api("node1")]), tmp_path, env)
    until_ok(shlex.join([*hana, "put", "displays/while-down-2", '{"n": 2}', "--api", demo.api("node2")]), tmp_path,
             env)  # fmt: skip
    assert demo.proc.poll() is None  # the demo did not stop
    mark = len(demo.out.lines)
    demo.type("r node3")
    demo.out.wait_for(r"demo: node3 restarted \(pid \d+\)", 10, start=mark)
    demo.out.wait_for(r"demo: node3 is back: \w+, caught up with the controller node\d", 30, start=mark)
    local = [*hana, "get", "displays/while-down-2", "--consistency", "local", "--json", "--api", victim_api]
    got = until_ok(shlex.join(local), tmp_path, env, timeout=10)
    assert '"n": 2' in got.stdout
    until_ok(shlex.join([*hana, "status", "--api", victim_api]), tmp_path, env)  # exit 0: healthy again
    # Killing from the demo itself, for a rehearsal without another terminal.
    mark = len(demo.out.lines)
    demo.type("k 2")
    demo.out.wait_for(r"demo: node2 exited \(killed by SIGKILL", 10, start=mark)
    demo.type("bogus")
    demo.out.wait_for(r"unknown command 'bogus'; h for help", 10, start=mark)
    # SIGTERM (as Ctrl-C: the other test) stops every node and deletes the temporary data.
    assert demo.stop(signal.SIGTERM) == 0
    assert "deleted the demo data" in demo.out.text()
    assert not Path(data.group(1)).exists()


@pytest.mark.slow
def test_keep_leaves_the_data_and_a_second_run_resumes_the_state(runs: list[DemoRun], tmp_path: Path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"))
    kept = tmp_path / "xdg" / "hana" / "demo"
    first = DemoRun("--keep", env=env)
    runs.append(first)
    assert f"Data: {kept} (kept: " in first.banner and "demo --keep` resumes this mesh" in first.banner
    hana = shlex.split(first.pasted("status"))[:-3]
    cmd_env = dict(first.env, COLUMNS="80")
    until_ok(shlex.join([*hana, "put", "displays/kept", '{"show": "opening"}', "--api", first.api("node1")]),
             tmp_path, cmd_env)  # fmt: skip
    assert first.stop(signal.SIGINT) == 0
    assert f"demo data kept in {kept}" in first.out.text()
    assert (kept / "node1").is_dir() and (kept / "cluster-name").is_file()

    second = DemoRun("--keep", env=env)
    runs.append(second)
    assert "resumed from kept data" in second.banner, second.banner
    # On the same addresses as before (commands printed then still work),
    # unless a port was taken meanwhile, which the demo says.
    for nid, (api, _) in first.nodes.items():
        assert second.api(nid) == api or f"{nid}: the ports of the last run are taken" in second.banner
    got = until_ok(shlex.join([*hana, "get", "displays/kept", "--json", "--api", second.api("node2")]), tmp_path,
                   cmd_env)  # fmt: skip
    assert '"show": "opening"' in got.stdout
    assert second.stop() == 0


def test_the_page_is_never_opened_without_a_graphical_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh.node import demo

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("webbrowser used")

    monkeypatch.setattr(demo.webbrowser, "get", refuse)
    assert demo.open_page("http://127.0.0.1:1/", enabled=False).startswith("not opened")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(demo.sys, "platform", "linux")
    assert demo.open_page("http://127.0.0.1:1/", enabled=True).startswith("no graphical session")
    # A browser that runs in the terminal (lynx, w3m) would take it over: not used.
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(demo.webbrowser, "get", lambda: demo.webbrowser.GenericBrowser("lynx"))
    assert "runs in a terminal" in demo.open_page("http://127.0.0.1:1/", enabled=True)


def test_the_banner_names_hana_node_by_a_path_that_works_anywhere() -> None:
    from mesh.node.demo import hana_node_command

    cmd = shlex.split(hana_node_command())
    assert os.path.isabs(cmd[0]) and os.access(cmd[0], os.X_OK)
    out = subprocess.run([*cmd, "status", "--help"], capture_output=True, text=True, timeout=30, cwd="/",
                         env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0 and "Exit status" in out.stdout, out.stderr
