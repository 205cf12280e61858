"""The terminal kit's own promise: a command under test gets Ctrl-C as a
person's foreground command would, however the test run was started."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.cli.kit import as_a_foreground_job

PROBE = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"]


def test_ctrl_c_reaches_the_command_when_the_test_run_ignores_it() -> None:
    # As a shell without job control starts `bash .ci/run &`: SIGINT ignored,
    # and inherited by every process below.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        inherited = subprocess.run(PROBE, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        foreground = subprocess.run(
            PROBE, capture_output=True, text=True, timeout=30, check=True, preexec_fn=as_a_foreground_job
        ).stdout.strip()
    finally:
        signal.signal(signal.SIGINT, before)
    assert inherited == "False"  # Python keeps an inherited ignore: Ctrl-C would do nothing
    assert foreground == "True"  # KeyboardInterrupt, as in a terminal
