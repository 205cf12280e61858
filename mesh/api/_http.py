"""What every route module of the API shares: app and request keys, the
settings of the HTTP edge, the error shape, bounded body reading, strict
decoding of paths and queries, and proposing a command with its author and
role (after the state machine's `prepare`). Internal to mesh/api: route modules import this,
never app.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from mesh.api.auth import Identity, TokenAuth
from mesh.api.handle import NodeHandle
from mesh.errors import BadRequest, MeshError, TooLarge
from mesh.state.kv import CommandError, validate_key
from mesh.state.model import ERROR_STATUS

log = logging.getLogger("mesh.api")

# The largest integer a client may send (expected_version, since, limit):
# what every encoder on the way (orjson, the log) carries as an integer.
MAX_INT = (1 << 63) - 1
# A body must arrive within this many seconds once its headers have.
BODY_TIMEOUT = 30.0


class ApiError(MeshError):
    """An error with its own status and code (and optional response headers)."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message, **extra)
        self.status = status
        self.code = code
        self.headers = headers or {}


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "unsupported_media_type", message)


def _authority(text: str) -> tuple[str, int | None] | None:
    """(host, port) of `host`, `host:port`, `[v6]` or `[v6]:port`, host in
    lower case (IPv6 in brackets); None if malformed."""
    text = text.strip().lower()
    if not text or len(text) > 300:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text if ":" in text else None
        if not host or any(c in host for c in "/@ \t?#[]"):
            return None
    if port_text is None:
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _host_name(ip: str) -> str:
    """How an address appears in a Host header (an IPv4 client of a
    dual-stack socket as IPv4)."""
    if ":" in ip:
        try:
            mapped = ipaddress.IPv6Address(ip.split("%", 1)[0]).ipv4_mapped
        except ValueError:
            mapped = None
        return str(mapped) if mapped is not None else f"[{ip.lower()}]"
    return ip.lower()


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclass
class ApiSettings:
    """The edge's configuration. `bound` is filled by `run_api` once the
    listening port is known; the names of the connection's own socket are
    always the node's names too."""

    auth: TokenAuth | None
    admin_token: str | None
    max_body: int
    allow_origins: frozenset[str] = frozenset()
    # (host, port or None for "the port this connection came in on")
    allow_hosts: frozenset[tuple[str, int | None]] = frozenset()
    bound: set[tuple[str, int]] = field(default_factory=set)
    body_timeout: float = BODY_TIMEOUT
    # How this node calls the other members' APIs (?confirm=all): over HTTPS,
    # verified against the cluster CA, when the mesh serves --api-tls.
    member_ssl: ssl.SSLContext | None = None
    # is_own's answers by (authority, default port, the connection's socket
    # name): every request asks with the Host its connection always sends.
    _own: dict[tuple[str, int, object], bool] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def make(
        cls,
        auth: TokenAuth | None,
        admin_token: str | None,
        allow_origins: Sequence[str],
        allow_hosts: Sequence[str],
        max_body: int,
    ) -> ApiSettings:
        if max_body < 1:
            raise ValueError("max_body must be positive")
        if admin_token is not None and len(admin_token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        origins = set()
        for raw in allow_origins:
            origin = normalize_origin(raw)
            if origin is None:
                raise ValueError(f"--allow-origin {raw!r}: expected scheme://host[:port], e.g. http://show-laptop:8080")
            origins.add(origin)
        hosts = set()
        for raw in allow_hosts:
            parsed = _authority(raw)
            if parsed is None:
                raise ValueError(f"--allow-host {raw!r}: expected a host name or address, optionally with :port")
            hosts.add(parsed)
        return cls(auth, admin_token, max_body, frozenset(origins), frozenset(hosts))

    def bind(self, host: str, port: int) -> None:
        """Record the address the API listens on (after the bind: port known)."""
        if host in ("", "0.0.0.0", "::"):
            return  # a wildcard bind: the connection's own address names the node
        name = _authority(host) if host.startswith("[") else _authority(_host_name(host))
        if name is not None:
            self.bound.add((name[0], port))
        if is_loopback_name(host):
            self.bound.update((n, port) for n in LOOPBACK_NAMES)
        self._own.clear()

    def own_names(self, request: web.BaseRequest) -> set[tuple[str, int]]:
        names = set(self.bound)
        transport = request.transport
        sock = transport.get_extra_info("sockname") if transport is not None else None
        if isinstance(sock, tuple) and len(sock) >= 2:
            ip, port = str(sock[0]), int(sock[1])
            names.add((_host_name(ip), port))
            if is_loopback_name(_host_name(ip)):
                names.update((n, port) for n in LOOPBACK_NAMES)
            names.update((h, port if p is None else p) for h, p in self.allow_hosts)
        else:
            names.update((h, p) for h, p in self.allow_hosts if p is not None)
        return names

    def is_own(self, request: web.BaseRequest, authority: str, default_port: int) -> bool:
        """`authority` names this node (for this connection). Remembered:
        the answer depends only on the authority, the default port and the
        connection's socket name (and on `bound`, which clears it)."""
        transport = request.transport
        sock = transport.get_extra_info("sockname") if transport is not None else None
        key = (authority, default_port, sock if isinstance(sock, tuple) else None)
        known = self._own.get(key)
        if known is None:
            known = self._is_own(request, authority, default_port)
            if len(self._own) >= 256:
                self._own.clear()
            self._own[key] = known
        return known

    def _is_own(self, request: web.BaseRequest, authority: str, default_port: int) -> bool:
        parsed = _authority(authority)
        if parsed is None:
            return False
        host, port = parsed
        return (host, default_port if port is None else port) in self.own_names(request)


def is_loopback_name(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_origin(raw: str) -> str | None:
    """`scheme://host[:port]` in lower case, default ports dropped; None if
    not such an origin (`null` included: it is never allowed)."""
    scheme, sep, rest = raw.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest.rstrip("/"):
        return None
    parsed = _authority(rest.rstrip("/"))
    if parsed is None:
        return None
    host, port = parsed
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


NODE = web.AppKey("node", NodeHandle)
SETTINGS = web.AppKey("settings", ApiSettings)
IDENTITY = web.RequestKey("identity", Identity)
_QUERY = web.RequestKey("strict_query", dict)


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def error_body(code: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, **extra}})


def error_response(exc: MeshError) -> web.Response:
    resp = web.Response(body=orjson.dumps(exc.body()), status=exc.status, content_type="application/json")
    for name, value in getattr(exc, "headers", {}).items():
        resp.headers[name] = value
    if exc.status in (413, 415):
        # The body was not read (or not all of it): do not keep the connection.
        resp.force_close()
    return resp


# -- strict decoding -------------------------------------------------------------

_HEX = frozenset(b"0123456789abcdefABCDEF")


def strict_unquote(text: str, what: str, plus_is_space: bool = False) -> str:
    """Percent-decoding that refuses what a lenient decoder passes through:
    a `%` not followed by two hex digits, and bytes that are not UTF-8."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid UTF-8", code="invalid_encoding") from None
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # %
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise BadRequest(f"{what}: bad percent-encoding at byte {i}", code="invalid_encoding")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(0x20 if plus_is_space and b == 0x2B else b)
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not valid UTF-8 once percent-decoded", code="invalid_encoding") from None


def raw_path(request: web.BaseRequest) -> str:
    return request.raw_path.split("?", 1)[0].split("#", 1)[0]


def path_tail(request: web.BaseRequest, prefix: str) -> str:
    """The rest of the request path after `prefix`, decoded strictly from the
    raw path (so `%2F` and `/` are alike, and `%ff` is an error)."""
    path = strict_unquote(raw_path(request), "the request path")
    if not path.startswith(prefix):
        raise BadRequest(f"the path must start with {prefix}", code="invalid_key")
    return path[len(prefix) :]


def path_segment(request: web.BaseRequest, index: int) -> str:
    """One `/`-separated segment of the raw path, decoded strictly."""
    parts = raw_path(request).split("/")
    if index >= len(parts):
        raise BadRequest("the path is too short", code="invalid_value")
    return strict_unquote(parts[index], "the request path")


def query(request: web.Request) -> dict[str, str]:
    """The query string decoded strictly (first value of each name)."""
    cached = request.get(_QUERY)
    if cached is not None:
        return cached
    out: dict[str, str] = {}
    _, _, raw = request.raw_path.partition("?")
    raw = raw.split("#", 1)[0]
    for part in raw.split("&") if raw else ():
        if not part:
            continue
        name, _, value = part.partition("=")
        name = strict_unquote(name, "a query parameter name", plus_is_space=True)
        out.setdefault(name, strict_unquote(value, f"query parameter {name!r}", plus_is_space=True))
    request[_QUERY] = out
    return out


def int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = query(request).get(name)
    if raw is None:
        return default
    return parse_int(raw, name)


def parse_int(raw: str, name: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer", code="invalid_value")
    if len(raw) > 19 or int(raw) > MAX_INT:
        raise BadRequest(f"{name} must be at most {MAX_INT}", code="invalid_value")
    return int(raw)


def expected_version(raw: Any, where: str = "") -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or raw < 0:
        raise BadRequest(f"{where}expected_version must be a non-negative integer", code="invalid_value")
    if raw > MAX_INT:
        raise BadRequest(f"{where}expected_version must be at most {MAX_INT}", code="invalid_value")
    return raw


def linearizable(request: web.Request) -> bool:
    consistency = query(request).get("consistency", "linearizable")
    if consistency not in ("linearizable", "local"):
        raise BadRequest("consistency must be linearizable or local", code="invalid_value")
    return consistency == "linearizable"


def valid_key(request: web.Request, key: Any, where: str = "") -> str:
    """Syntax and component checked before anything is proposed (the state
    machine checks again, identically on every node)."""
    try:
        validate_key(key)
        request.app[NODE].kv.registry.component_of(key)
    except CommandError as exc:
        raise BadRequest(f"{where}{exc}", code="invalid_key") from exc
    except LookupError as exc:
        message = getattr(exc, "message", str(exc))
        raise BadRequest(f"{where}{message}", code="unknown_component") from exc
    return key


def path_key(request: web.Request) -> str:
    return valid_key(request, path_tail(request, "/v1/kv/"))


# -- bodies ----------------------------------------------------------------------


def refuse_encoded(request: web.BaseRequest) -> None:
    """Bodies are taken as sent: any content coding but identity is refused
    before a byte is read (the server never decompresses)."""
    for value in request.headers.getall("Content-Encoding", ()):
        for coding in value.split(","):
            if coding.strip().lower() not in ("", "identity"):
                raise unsupported_media_type(
                    f"Content-Encoding {coding.strip()!r} is not accepted; send the body uncompressed"
                )
    for value in request.headers.getall("Transfer-Encoding", ()):
        for coding in value.split(","):
            if coding.strip().lower() not in ("", "chunked", "identity"):
                raise unsupported_media_type(f"Transfer-Encoding {coding.strip()!r} is not accepted")


def require_json(request: web.BaseRequest) -> None:
    ctype = request.headers.get("Content-Type")
    if ctype is None or request.content_type != "application/json":
        raise unsupported_media_type(
            f"the body must be Content-Type: application/json (got {ctype or 'none'})",
        )
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise unsupported_media_type(f"JSON bodies are UTF-8 (got charset {charset})")


async def read_body(request: web.Request, limit: int | None = None) -> bytes:
    """The body, at most `limit` bytes (default: the app's max_body), refused
    as soon as it is known to be larger: by its Content-Length before
    reading, or while streaming. Bounded in time too."""
    settings = request.app[SETTINGS]
    limit = settings.max_body if limit is None else limit
    refuse_encoded(request)
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge(f"request body of {length} bytes is larger than {limit}; send less (or raise --max-body)")
    if request.content.is_eof():
        # The whole body came with the headers (a small write's usual case):
        # take it without a timer, a task switch or a read loop.
        body = request.content.read_nowait()
        if len(body) > limit:
            raise TooLarge(f"request body larger than {limit} bytes; send less (or raise --max-body)")
        return body
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(settings.body_timeout):
            while True:
                chunk = await request.content.read(min(1 << 16, limit + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise TooLarge(f"request body larger than {limit} bytes; send less (or raise --max-body)")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {settings.body_timeout:g} s") from None
    return b"".join(chunks)


async def read_json(request: web.Request, limit: int | None = None) -> Any:
    require_json(request)
    raw = await read_body(request, limit)
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc


async def read_json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    doc = await read_json(request)
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    unknown = set(doc) - allowed
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", code="invalid_field")
    return doc


async def optional_json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """For routes whose body may be left out (undo, redo, restore)."""
    if not request.body_exists:
        return {}
    return await read_json_object(request, allowed)


# -- commands --------------------------------------------------------------------


def state_error(code: str, message: str, extra: dict[str, Any]) -> ApiError:
    status = ERROR_STATUS.get(code, 400)
    extra = {k: v for k, v in extra.items() if k not in ("code", "message")}
    return ApiError(status, code, message, **extra)


def raise_for_result(result: dict[str, Any]) -> dict[str, Any]:
    """A state-machine result, or its error raised with the status the state
    model assigns to its code."""
    err = result.get("error")
    if err is None:
        return result
    code = str(err.get("code", "error"))
    raise state_error(code, str(err.get("message", code)), err)


def prepare(node: NodeHandle, command: dict[str, Any]) -> dict[str, Any]:
    """The command as it will be proposed, after the state machine's own
    stateless checks (the very parse `apply` runs first): nothing invalid
    reaches the log."""
    try:
        return node.kv.prepare(command)
    except CommandError as exc:
        raise state_error(exc.code, str(exc), getattr(exc, "extra", {}) or {}) from None


def stamp(request: web.Request, command: dict[str, Any]) -> dict[str, Any]:
    """Author and role come from the identity, whatever the client sent."""
    ident: Identity = request[IDENTITY]
    command["author"] = ident.name
    command["role"] = ident.role
    return command


async def propose(request: web.Request, command: dict[str, Any]) -> dict[str, Any]:
    node = request.app[NODE]
    stamp(request, command)
    return raise_for_result(await node.propose(prepare(node, command)))
