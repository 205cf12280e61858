"""hana-node's credential commands (issue 18): `init`, `invite`,
`rotate-ca`, `members approve`, and the serve flags `--join`,
`--request-join` (and the hidden `--cert-lifetime`, `--trust-interval`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.node.flags import CliError


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--join", default=None, metavar="TOKEN", help="join a cluster with a token from `hana-node invite`"
    )
    serve.add_argument(
        "--request-join",
        default=None,
        metavar="URL",
        help="without a token: ask the node at URL (http(s)://host:port of its API), or a member found with "
        "mDNS (`mdns`), and wait for an admin's approval (hana-node members approve ID)",
    )
    # Hidden: node certificate lifetime in seconds (tests renew in seconds) and the trust loop's period.
    serve.add_argument("--cert-lifetime", type=int, default=90 * 86400, help=argparse.SUPPRESS)
    serve.add_argument("--trust-interval", type=float, default=1.0, help=argparse.SUPPRESS)


def add_commands(sub: Any, cmd: Callable[..., argparse.ArgumentParser]) -> None:
    init = sub.add_parser("init", help="make a new cluster's CA and this node's certificate (in DATA/tls)")
    init.add_argument("--data-dir", required=True, help="the data dir `serve` will use")
    init.add_argument("--cluster", default="hana", help="cluster name")
    init.add_argument("--node-id", default=None, help="this node's id (default: host name)")
    init.add_argument(
        "--hosts",
        default="127.0.0.1,localhost",
        metavar="HOST,…",
        help="IPs and DNS names of this node's --raft and --api, for its certificate",
    )
    init.add_argument("--cert-lifetime", type=int, default=90 * 86400, help=argparse.SUPPRESS)
    invite = cmd("invite", "print a one-time join token for a new machine (admin)")
    invite.add_argument("--expires", default="10m", help="how long the token is good for (10m, 2h, 1d)")
    invite.add_argument("--role", choices=("voter", "learner"), default="learner", help="what the machine joins as")
    cmd("rotate-ca", "roll the cluster CA: both CAs trusted during the roll, every node renewed (admin)")


def init(args: argparse.Namespace) -> int:
    import socket

    from mesh.trust import ca, local

    node_id = args.node_id or socket.gethostname()
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        creds = local.init_cluster(Path(args.data_dir), args.cluster, node_id, hosts, lifetime_s=args.cert_lifetime)
    except ca.TrustError as exc:
        raise CliError(str(exc)) from None
    from mesh.trust import boot, files

    files.write_atomic(files.tls_dir(args.data_dir) / boot.BOOTSTRAP, b"1\n")
    ca_fp = ca.fingerprint(local.bundle(args.data_dir)[-1])
    print(f"cluster {creds.cluster}: CA sha256 {ca_fp}")
    print(f"node {creds.node_id}: {creds.cert} (key {creds.key}, mode 0600)")
    print(f"next: hana-node serve --id {creds.node_id} --data-dir {args.data_dir} ... ; then hana-node invite")
    return 0


async def run_command(c: Any, args: argparse.Namespace, out: Callable[[argparse.Namespace, Any, Any], int]) -> int:
    if args.command == "invite":
        doc = await c.request("POST", "/v1/trust/invite", {"expires": args.expires, "role": args.role})
        if args.json:
            return out(args, doc, None)
        print(doc["token"])
        return 0
    if args.command == "rotate-ca":
        doc = await c.request("POST", "/v1/trust/rotate-ca", {})
        return out(
            args,
            doc,
            lambda d: (
                f"CA roll started: new CA sha256 {d.get('new_ca')}. Every node now trusts both CAs, renews its "
                "certificate from the new one, then the old CA is dropped (hana-node status / GET /v1/trust)"
            ),
        )
    raise CliError(f"unknown command {args.command}")


async def approve(c: Any, args: argparse.Namespace, out: Callable[[argparse.Namespace, Any, Any], int]) -> int:
    doc = await c.request("POST", "/v1/trust/approve", {"id": args.member_id})
    return out(
        args, doc, lambda d: f"approved {d.get('id')} (key sha256 {d.get('fingerprint')}): it joins as a learner"
    )
