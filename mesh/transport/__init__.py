"""Peer transport: authenticated frames (codec), TCP connections, and an
in-memory twin for the simulator."""
