"""Finding the other nodes of this cluster.

`Discovery` (base.py) is the interface the node uses; two implementations:
`StaticDiscovery` (a fixed seed list, static.py) and `MdnsDiscovery`
(python-zeroconf, mdns.py, the only module importing zeroconf; import it
from `mesh.discovery.mdns` so that a node started with --no-mdns never loads
zeroconf). Discovery only *finds* peers: liveness comes from Raft and
membership changes go through the log (mesh/node/autopilot.py), initial
configuration from mesh/node/bootstrap.py.
"""

from mesh.discovery.base import (
    SERVICE_TYPE,
    BootstrapState,
    Discovery,
    Peer,
    decode_txt,
    encode_txt,
    parse_interfaces,
)
from mesh.discovery.static import StaticDiscovery

__all__ = [
    "SERVICE_TYPE",
    "BootstrapState",
    "Discovery",
    "Peer",
    "StaticDiscovery",
    "decode_txt",
    "encode_txt",
    "parse_interfaces",
]
