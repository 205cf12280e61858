"""OSC for hana mesh (issue 15): the bridge between OSC controllers and the
live stream, and OSCQuery.

- codec.py: OSC packets in and out through python-osc, every bad datagram
  refused before and around the library's parser;
- mapping.py: the `input_mappings` records of kind "osc" (address -> key,
  range scaling), types and ranges from the component schemas;
- bridge.py: `--osc-listen` (UDP in -> live sets; a bundle is one gesture
  step, silence settles) and `--osc-send` (changes of mapped keys -> OSC);
- oscquery.py: the parameter tree over HTTP/WebSocket (Vidvox proposal);
- routes.py: `GET /v1/osc` and the monitor WebSocket on the node's API;
- service.py: starting and stopping all of it in `hana-node serve`.

It sits beside mesh/api: it sees the node only through the API's handle
(plus the live stream's methods), never mesh/node.
"""
