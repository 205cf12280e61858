"""Running `hana-node` as a user does (a subprocess, optionally on a
pseudo-terminal of a fixed size) against one 3-node mesh per test module."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mesh import cli_status
from mesh.client import ApiError, MeshClient, Unreachable
from tests.integration.harness import Cluster, running_cluster

HANA = [sys.executable, "-m", "mesh.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("HANA_TOKEN", "HANA_TOKEN_FILE", "COLUMNS", "LINES")}
    out.update(extra)
    return out


def hana(*args: str, columns: int | None = 80, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    e = env(**extra)
    if columns is not None:
        e["COLUMNS"] = str(columns)
    return subprocess.run([*HANA, *args], capture_output=True, text=True, timeout=timeout, env=e)


def as_a_foreground_job() -> None:
    """In the child, before exec: SIGINT and SIGQUIT as a shell leaves them
    for a job in the foreground of a terminal. A shell without job control
    starts a background job (`bash .ci/run &`) with both ignored, every
    process under it inherits that, and a Python started with SIGINT
    ignored keeps ignoring it: Ctrl-C would do nothing to the command under
    test (seen: both Ctrl-C tests failed in a CI run started with `&`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _start_on_terminal(
    args: tuple[str, ...], rows: int, columns: int, new_session: bool = False
) -> tuple[int, subprocess.Popen[bytes]]:
    """`hana-node ARGS` on a new pseudo-terminal `rows` x `columns` (its
    stdin, stdout and stderr), started as a foreground job; the terminal's
    master end (the caller closes it) and the process."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    try:
        proc = subprocess.Popen(
            [*HANA, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env(**TERMINAL_ENV),
            start_new_session=new_session,
            preexec_fn=as_a_foreground_job,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return master, proc


def hana_in_terminal(
    *args: str, columns: int = 80, timeout: float = 30, interrupt_after: float | None = None, rows: int = 24
) -> tuple[int, str]:
    """Run on a pseudo-terminal `columns` wide (no COLUMNS in the
    environment: the width comes from the terminal, as for a person);
    the exit status and the output without colour codes. A command that
    runs until Ctrl-C gets SIGINT by its PID after `interrupt_after`
    seconds (and `timeout` bounds the whole run)."""
    master, proc = _start_on_terminal(args, rows, columns)
    chunks: list[bytes] = []
    start = time.monotonic()
    deadline = start + timeout
    interrupt_at = None if interrupt_after is None else start + interrupt_after
    try:
        if interrupt_at is not None and _read_terminal(master, proc, interrupt_at, chunks):
            proc.send_signal(signal.SIGINT)
        _read_terminal(master, proc, deadline, chunks)
        try:
            # The terminal closes as the command exits: it may still be
            # finishing; only one past the deadline is stuck.
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signals = _signal_state(proc.pid)
            proc.send_signal(signal.SIGABRT)  # faulthandler prints the stacks on the terminal
            _read_terminal(master, proc, time.monotonic() + 5, chunks)
            raise AssertionError(
                f"still running {timeout:g} s after it started ({signals}); its output, then its threads' stacks:\n"
                + ANSI.sub("", b"".join(chunks).decode(errors="replace"))[-6000:]
            ) from None
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r\n", "\n")
    return rc, text


# faulthandler on: SIGABRT then prints every thread's stack.
TERMINAL_ENV = {"TERM": "xterm", "PYTHONFAULTHANDLER": "1"}


def _signal_state(pid: int) -> str:
    """The kernel's view of a process's signals (blocked, ignored, caught
    masks): a Ctrl-C that does nothing is often an ignored or blocked SIGINT,
    inherited from whatever started the process."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return f"no /proc/{pid}/status: {exc}"
    out = " ".join(line.replace("\t", "") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    # Where each thread waits (a process stuck past its own signal handling
    # is stuck in C: the wait channel and system call say where).
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        with contextlib.suppress(OSError):
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan, syscall = (task / "wchan").read_text(), (task / "syscall").read_text().split(" ")[0]
            out += f"; thread {task.name} {state} wchan={wchan} syscall={syscall}"
    if shutil.which("gdb"):
        try:
            gdb = subprocess.run(
                ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 20"],
                capture_output=True,
                text=True,
                timeout=90,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return out + f"\nno native stacks: {exc!r}"
        bt = [line for line in gdb.stdout.splitlines() if line.startswith(("#", "Thread"))]
        out += "\n" + "\n".join(bt or gdb.stderr.splitlines()[-5:])
    return out


def _read_terminal(master: int, proc: subprocess.Popen[bytes], until: float, chunks: list[bytes]) -> bool:
    """Collect what `proc` prints on the terminal until `until` (monotonic);
    False if it ended first (its terminal closed, or it exited)."""
    while time.monotonic() < until:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return False
            if not data:
                return False
            chunks.append(data)
        elif proc.poll() is not None:
            return False
    return True


def rows(text: str, ids: list[str]) -> dict[str, list[str]]:
    """The table rows of `status` by member id (the asked one is marked *)."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0].rstrip("*") in ids:
            out[words[0].rstrip("*")] = words
    return out


async def report(api: str) -> cli_status.StatusReport | None:
    def make(a: str, timeout: float) -> MeshClient:
        return MeshClient(a, timeout=timeout)

    try:
        doc = await cli_status.asked_status(make, api)
    except (Unreachable, ApiError):
        return None
    return await cli_status.gather(make, doc)


def wait_exit_code(api: str, code: int, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run `status` until it exits with `code` (the mesh settles)."""
    deadline = time.monotonic() + timeout
    while True:
        out = hana("status", "--api", api)
        if out.returncode == code or time.monotonic() > deadline:
            assert out.returncode == code, f"status exit {out.returncode}, wanted {code}:\n{out.stdout}{out.stderr}"
            return out
        time.sleep(0.3)


def module_mesh(root: Path) -> Iterator[Cluster]:
    with running_cluster(root, 3) as c:
        c.start_all()
        asyncio.run(c.wait_leader())
        yield c


def make_healthy(c: Cluster, timeout: float = 30.0) -> str:
    """Every node running and not stopped, a controller, every voter
    healthy (as `status` judges it); the controller's id."""
    for nid, node in c.nodes.items():
        if node.alive():
            node.signal(signal.SIGCONT)
        else:
            c.start(nid)

    async def settled() -> str:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await report(c.nodes["n1"].api)
            if last is not None and last.code == 0:
                return str(last.controller)
            await asyncio.sleep(0.1)
        raise AssertionError(f"the mesh did not settle: {last}\n{c.logs()}")

    return asyncio.run(settled())


class Lines:
    """A child's output read line by line in a thread (never blocking the test)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def wait_count(self, n: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.lines)} lines, wanted {n}:\n" + "\n".join(self.lines))
                self._cond.wait(left)
            return list(self.lines)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


class TerminalRun:
    """A command on a pseudo-terminal of a fixed size, its screen output
    (colour codes removed) collected in a thread, for commands that redraw."""

    def __init__(self, *args: str, columns: int = 80) -> None:
        self._master, self.proc = _start_on_terminal(args, 40, columns, new_session=True)
        self._chunks: list[bytes] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._cond.notify_all()
                    return
                self._chunks.append(data)
                self._cond.notify_all()

    def raw(self) -> str:
        with self._cond:
            return b"".join(self._chunks).decode(errors="replace")

    def text(self) -> str:
        return ANSI.sub("", self.raw()).replace("\r\n", "\n")

    def mark(self) -> int:
        return len(self.text())

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text(), start)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text()[start:][-3000:]}")
            with self._cond:
                self._cond.wait(0.1)

    def interrupt(self, timeout: float = 15) -> int:
        """Ctrl-C (SIGINT by PID); its exit status. A command that does
        not exit within `timeout` fails the test with what it printed after
        the Ctrl-C and its threads' stacks."""
        at = self.mark()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                signals = _signal_state(self.proc.pid)
                self.proc.send_signal(signal.SIGABRT)  # faulthandler: the stacks
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
                self._reader.join(timeout=5)  # it reads to the end of the output
                raise AssertionError(
                    f"no exit within {timeout:g} s of Ctrl-C ({signals}); printed since, then its threads' stacks:\n"
                    + self.text()[at:][-6000:]
                ) from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self._master)
