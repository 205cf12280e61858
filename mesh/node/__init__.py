"""The asyncio runtime of a mesh node."""
