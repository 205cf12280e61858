"""Shared pieces of the transport tests."""

from __future__ import annotations

import asyncio
from typing import Any


class Inbox:
    """Collects delivered messages; `wait_for(n)` until n have arrived."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.changed = asyncio.Event()

    def __call__(self, m: Any) -> None:
        self.messages.append(m)
        self.changed.set()

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self.changed.clear()
                await self.changed.wait()


def dialer_sealer(secret: bytes, cluster: str, context: bytes) -> Any:
    """Seals what a hand-made dialer writes after the hellos on a PSK link
    (protocol 3: mesh/transport/aead.py)."""
    from mesh.transport.aead import Sealer, derive_keys

    return Sealer(derive_keys(secret, cluster, context[:16], context[16:])[0])


def plaintext_forms(marker: bytes) -> list[bytes]:
    """How `marker` can appear on an unencrypted wire: as is, and base64
    encoded at each of the three alignments (Raft entries travel as base64
    in JSON). The wire checks look for every form."""
    import base64

    forms = [marker]
    for k in range(3):
        padded = bytes(k) + marker
        enc = base64.b64encode(padded)
        start = {0: 0, 1: 2, 2: 3}[k]
        stable = enc[start : (len(padded) // 3) * 4]
        if len(stable) >= 12:
            forms.append(stable)
    return forms


def leaked(data: bytes | bytearray, markers: list[bytes]) -> list[bytes]:
    """The markers found in `data` in any of their plaintext forms."""
    return [m for m in markers if any(f in data for f in plaintext_forms(m))]
