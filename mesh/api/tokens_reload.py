"""The tokens file reloaded while the node runs (issue 18): polled for a
change every `POLL_S` seconds, and reloaded at once on SIGHUP
(`TokenAuth.reload_if_changed`). An aiohttp cleanup_ctx: started with the
API, stopped with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from mesh.api._http import SETTINGS
from mesh.api.auth import TokenAuth

log = logging.getLogger("mesh.api")

POLL_S = 1.0


async def _poll(auth: TokenAuth, wake: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_S):
                await wake.wait()
        forced = wake.is_set()
        wake.clear()
        try:
            auth.reload_if_changed(force=forced)
        except Exception:  # never let a reload end the poll; say so
            log.exception("event=tokens_reload_failed path=%s", auth.path)


async def tokens_task(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: poll the tokens file; SIGHUP reloads it now."""
    auth = app[SETTINGS].auth
    if auth is None or auth.path is None:
        yield
        return
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    hup = False
    try:
        loop.add_signal_handler(signal.SIGHUP, wake.set)
        hup = True
    except (NotImplementedError, RuntimeError, ValueError) as exc:  # not the main thread, or no SIGHUP
        log.info("event=tokens_sighup_unavailable reason=%s", type(exc).__name__)
    task = loop.create_task(_poll(auth, wake), name="api-tokens-reload")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if hup:
        loop.remove_signal_handler(signal.SIGHUP)
