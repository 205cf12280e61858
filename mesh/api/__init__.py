"""The HTTP/WebSocket API of shared/API.md (aiohttp), over a `NodeHandle`."""
