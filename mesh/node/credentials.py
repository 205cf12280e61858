"""Secrets and tokens on disk: the cluster secret, the node's admin token,
and how a CLI on the same machine finds that token.

Every file here is private to the user who runs the node (mode 0600 in a
0700 directory), and a secret or tokens file that others may read is
refused, as ssh refuses a private key that others can read: a secret that
leaked to another account is no secret, and saying so at start-up is
cheaper than finding out at a venue.

- The cluster secret (`--secret-file`, `HANA_SECRET`): there is no built-in
  one. A node whose `--raft` is loopback and that was given none uses a
  per-user secret file, `$XDG_CONFIG_HOME/hana/secret` (default
  `~/.config/hana/secret`), created once with 32 random bytes (as Erlang's
  cookie is), so every node one user starts on one machine agrees. A node
  on any other address refuses to start without one.
- The admin token: written at a node's first start to
  `<data-dir>/admin-token` (one line). On a loopback API without a tokens
  file it is the only way to the admin role. The node also leaves a pointer
  `$XDG_CONFIG_HOME/hana/api/<host>_<port>` naming its data directory, so
  `hana-node restore …` on that machine finds the token with no flag.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from mesh.node.flags import CliError

SECRET_BYTES = 32
MIN_SECRET = 16
ADMIN_TOKEN_FILE = "admin-token"
# Far more than any token or secret; a larger file is not one of ours.
MAX_CREDENTIAL_FILE = 64 * 1024


def config_dir() -> Path:
    """The per-user hana configuration directory."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hana"


def check_private(path: Path, what: str) -> None:
    """Refuse a credentials file that users other than its owner may read or
    write (what ssh does for a private key)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CliError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CliError(f"{what}: {path} is not a regular file")
    if st.st_mode & 0o077:
        raise CliError(
            f"{what}: {path} is readable or writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}` and keep it private"
        )


def read_private(path: Path, what: str) -> bytes:
    """The stripped content of a private credentials file (bounded read)."""
    check_private(path, what)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CREDENTIAL_FILE + 1)
    except OSError as exc:
        raise CliError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CREDENTIAL_FILE:
        raise CliError(f"{what}: {path} is larger than {MAX_CREDENTIAL_FILE} bytes; it is not a secret or token file")
    return raw.strip()


def _create_private(path: Path, content: bytes) -> None:
    """Create `path` with `content` (0600) unless it exists. The content is
    written to a temporary file first and linked into place, so a reader
    never sees a half-written file and two processes racing agree on one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process made it first: theirs counts
    finally:
        tmp.unlink()


def cluster_secret(secret_file: str | None, raft_is_loopback: bool, raft: str) -> tuple[bytes, str]:
    """The cluster secret and where it came from (for the start-up log)."""
    if secret_file:
        secret = read_private(Path(secret_file), "--secret-file")
        if len(secret) < MIN_SECRET:
            raise CliError(
                f"--secret-file: {secret_file} holds fewer than {MIN_SECRET} bytes; use a long random secret"
            )
        return secret, f"file:{secret_file}"
    env = os.environ.get("HANA_SECRET")
    if env:
        if len(env) < MIN_SECRET:
            raise CliError(f"HANA_SECRET must be at least {MIN_SECRET} characters")
        return env.encode(), "env:HANA_SECRET"
    if not raft_is_loopback:
        raise CliError(
            f"--raft {raft} is not loopback, so peers on the network must prove they belong: give every node "
            "the same secret with --secret-file FILE (or HANA_SECRET), e.g. "
            "`head -c 32 /dev/urandom | base64 > /etc/hana/secret && chmod 600 /etc/hana/secret`"
        )
    path = config_dir() / "secret"
    if not path.exists():
        _create_private(path, secrets.token_hex(SECRET_BYTES).encode() + b"\n")
    secret = read_private(path, "per-user secret")
    if len(secret) < MIN_SECRET:
        raise CliError(f"per-user secret {path} holds fewer than {MIN_SECRET} bytes; delete it to make a new one")
    return secret, f"user:{path}"


def admin_token(data_dir: Path) -> str:
    """The node's admin token, made at its first start."""
    path = data_dir / ADMIN_TOKEN_FILE
    if not path.exists():
        _create_private(path, secrets.token_urlsafe(32).encode() + b"\n")
    token = read_private(path, "admin token")
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise CliError(f"admin token {path} is not ASCII text; delete it to make a new one") from None
    if len(text) < MIN_SECRET or any(c.isspace() for c in text):
        raise CliError(f"admin token {path} is damaged; delete it to make a new one")
    return text


def _pointer(api: str) -> Path:
    host, _, port = api.rpartition(":")
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host.strip("[]"))
    return config_dir() / "api" / f"{safe}_{port}"


def remember_api(api: str, data_dir: Path) -> None:
    """Tell CLIs of this user where the node serving `api` keeps its data
    (so they find its admin token). Rewritten at every start."""
    path = _pointer(api)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, str(data_dir.resolve()).encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def node_data_dir(api: str) -> Path | None:
    """The data dir of the node this user runs at `api` on this machine (its
    pointer), or None (the CLI finds the cluster CA there: issue 18)."""
    try:
        return Path(read_private(_pointer(api), "node pointer").decode().strip())
    except (CliError, UnicodeDecodeError):
        return None


def find_admin_token(api: str) -> str | None:
    """The admin token of the node serving `api` on this machine, if this
    user started it (None when there is no pointer or no token)."""
    path = _pointer(api)
    try:
        data_dir = Path(read_private(path, "node pointer").decode())
    except (CliError, UnicodeDecodeError):
        return None
    token_path = data_dir / ADMIN_TOKEN_FILE
    if not token_path.exists():
        return None
    with contextlib.suppress(CliError, UnicodeDecodeError):
        return read_private(token_path, "admin token").decode("ascii")
    return None


def token_from_file(path: str) -> str:
    """A bearer token kept in a file (`--token-file`, `HANA_TOKEN_FILE`)."""
    raw = read_private(Path(path), "--token-file")
    try:
        token = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CliError(f"--token-file: {path} is not ASCII text") from None
    if not token or any(c.isspace() for c in token):
        raise CliError(f"--token-file: {path} must hold one token on one line")
    return token


def private_data_dir(data_dir: Path) -> bool:
    """Create the data directory 0700, or make an existing one 0700. True if
    an existing directory was opened up to others (the caller logs it)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        os.chmod(data_dir, 0o700)
        return True
    return False
