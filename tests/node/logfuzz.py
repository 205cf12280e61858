"""Random log entries for the log-fuzz test (issue 12): bytes a client, a
bug or a hostile member could get into the log, bypassing the API.

`EntryGenerator(seed).entries(n)` yields `n` entries, the same ones for the
same seed: valid commands of every op (with random roles, authors, clocks,
request ids, some repeated), and their corruptions: values nested up to
past orjson's 1024 levels, values and entries over the size limits,
invalid UTF-8, random bytes, truncations, every field with a wrong type,
unknown ops and fields, duplicate keys, odd-but-valid keys and numbers,
save files valid, tampered and deep (as text and parsed), and
conf-change-looking bytes in normal entries.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from mesh.raft import ConfChange, ConfState
from mesh.raft.messages import ConfChangeType
from mesh.state import savefile
from mesh.state.limits import MAX_COMMAND_BYTES, MAX_VALUE_BYTES

T0 = 1_714_564_800_000
KEYS = [
    "parameters/a",
    "parameters/b/c",
    "parameters/huge",
    "settings/fps",
    "settings/mode",
    "environment/main",
    "display_groups/g1",
    "displays/left",
    "displays/right",
    "windows/w1",
    "windows/w2",
    "plugins/p1",
    "modulation/m1",
    "input_mappings/i1",
]
ODD_KEYS = [
    "parameters/ünïcødé/😀",
    "parameters/" + "k" * 500,
    "parameters/with space",
    "parameters/%ff%fe",
    "settings/a/b/c/d/e/f",
]
BAD_KEYS = ["parameters//x", "parameters/../x", "nowhere/x", "parameters", "", "parameters/\x01", "/parameters/x"]
AUTHORS = ["alice", "bob", "admin", "eve", "anonymous", "unknown"]
NODES = ["n1", "n2", "n3"]
SAVE_NAMES = ["show", "opening", "s1", "s2", "recovery-x"]
WEIRD: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    (1 << 63) - 1,
    (1 << 64) - 1,
    -(1 << 63),
    1.5,
    -0.0,
    1e308,
    "",
    "x" * 3000,
    "😀\u0000\u2028",
    [],
    {},
    [[[]]],
    {"a": {"b": {"c": {}}}},
    ["put"],
    {"op": "put"},
]
# Stands for a deep value; replaced in the encoded bytes (orjson cannot
# write what is deeper than 254 levels, and we want up to 1100).
_DEEP = "\x00DEEP:{}\x00"


def _splice_deep(data: bytes) -> bytes:
    marker = b'"\\u0000DEEP:'
    while (i := data.find(marker)) >= 0:
        end = data.index(b'\\u0000"', i + len(marker))
        n = int(data[i + len(marker) : end])
        data = data[:i] + b"[" * n + b"]" * n + data[end + len(b'\\u0000"') :]
    return data


class EntryGenerator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.time = T0
        self.rids: list[str] = []
        self.n = 0
        self.oversize_left = 2  # entries over MAX_COMMAND_BYTES (costly: 16 MiB each)
        self.huge_left = 12  # values around the 1 MiB limit

    # -- values -------------------------------------------------------------------

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None,
                True,
                False,
                r.randint(-5, 5),
                r.choice([(1 << 64) - 1, -(1 << 63), 1 << 53]),
                r.random(),
                r.choice([0.1, -0.0, 1e-300, 1.7976931348623157e308]),
                r.choice(["x", "", "ünï", "😀", "\u0000", '"\\', "a" * r.randint(0, 50)]),
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.random()
        if depth >= 4 or kind < 0.5:
            return self.scalar()
        if kind < 0.75:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {r.choice(["a", "b", "name", "ü", "", "x" * 20]): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def value_for(self, key: str) -> Any:
        r = self.rng
        comp = key.split("/", 1)[0]
        if r.random() < 0.15:
            return self.value()  # often invalid for the schema
        if comp == "displays":
            return {"name": r.choice(["L", "R"]), "width": r.randint(0, 4000), "height": r.randint(1, 2000)}
        if comp == "windows":
            return {"display": "left", "x": r.randint(-5, 5), "width": r.random() * 100, "z": r.randint(0, 9)}
        if comp == "plugins":
            return {"type": r.choice(["shader", "video"]), "enabled": r.random() < 0.5, "state": {"v": r.random()}}
        if comp == "modulation":
            return {"source": "lfo1", "target": "parameters/a", "amount": r.random()}
        if comp == "input_mappings":
            return {"kind": r.choice(["osc", "midi", "dmx"]), "channel": r.randint(0, 17)}
        if comp == "environment":
            return {"name": "stage", "properties": {"k": self.value()}}
        if comp == "display_groups":
            return {"name": "g", "displays": ["left", "right"]}
        return self.value()

    def key(self) -> str:
        r = self.rng.random()
        if r < 0.9:
            return self.rng.choice(KEYS)
        if r < 0.96:
            return self.rng.choice(ODD_KEYS)
        return self.rng.choice(BAD_KEYS)

    # -- commands -------------------------------------------------------------------

    def _put(self) -> dict[str, Any]:
        k = self.key()
        cmd: dict[str, Any] = {"op": "put", "key": k, "value": self.value_for(k)}
        if self.rng.random() < 0.2:
            cmd["expected_version"] = self.rng.randint(0, 4)
        return cmd

    def _delete(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {"op": "delete", "key": self.key()}
        if self.rng.random() < 0.2:
            cmd["expected_version"] = self.rng.randint(0, 4)
        return cmd

    def _txn(self) -> dict[str, Any]:
        ops = []
        for _ in range(self.rng.randint(1, 5)):
            k = self.key()
            kind = self.rng.choice(["put", "put", "delete", "check"])
            op: dict[str, Any] = {"op": kind, "key": k}
            if kind == "put":
                op["value"] = self.value_for(k)
            if kind == "check" or self.rng.random() < 0.2:
                op["expected_version"] = self.rng.randint(0, 3)
            ops.append(op)
        return {"op": "txn", "ops": ops}

    def _undo(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {"op": self.rng.choice(["undo", "redo"])}
        if self.rng.random() < 0.3:
            cmd["stack"] = self.rng.choice(AUTHORS)
        if self.rng.random() < 0.3:
            cmd["force"] = self.rng.random() < 0.5
        return cmd

    def _save(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {"op": "save", "name": self.rng.choice(SAVE_NAMES)}
        if self.rng.random() < 0.4:
            cmd["components"] = self.rng.sample(
                ["parameters", "settings", "displays", "windows"], self.rng.randint(1, 3)
            )
        return cmd

    def _restore(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {"op": "restore", "name": self.rng.choice([*SAVE_NAMES, "imported"])}
        if self.rng.random() < 0.3:
            cmd["components"] = self.rng.sample(["parameters", "settings", "displays"], self.rng.randint(1, 2))
        return cmd

    def _delete_save(self) -> dict[str, Any]:
        return {"op": "delete_save", "name": self.rng.choice([*SAVE_NAMES, "imported"])}

    def save_text(self) -> str:
        r = self.rng
        comps = {
            "parameters": {"parameters/a": self.value(), "parameters/z": r.randint(0, 9)},
            "displays": {"displays/left": self.value_for("displays/left")},
        }
        if r.random() < 0.3:
            return savefile.export_v1(
                name="imported", cluster="other", revision=3, created=T0, entries={"parameters/a": self.value()}
            ).decode()
        text = savefile.export(name="imported", cluster="hana", revision=r.randint(0, 99), created=T0, components=comps)
        if r.random() < 0.25:  # tampered: the checksum no longer matches
            text = text.replace(b'"parameters/z":', b'"parameters/z":1', 1)
        return text.decode()

    def _import(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {"op": "import_save", "name": self.rng.choice([None, "imported", "imp2", "bad name"])}
        text = self.save_text()
        if self.rng.random() < 0.4:
            try:
                cmd["doc"] = orjson.loads(text)
            except orjson.JSONDecodeError:
                cmd["doc"] = text
        else:
            cmd["file"] = text
        return cmd

    def _resolve(self) -> dict[str, Any]:
        return {"op": "resolve", "id": self.rng.randint(0, 12), "take": self.rng.choice(["ours", "theirs", "both"])}

    def _compact(self) -> dict[str, Any]:
        return {"op": "compact", "revision": self.rng.randint(0, 30_000)}

    def _security(self) -> dict[str, Any]:
        return {
            "op": "security_event",
            "event": self.rng.choice(["login_failed", "Login", "login_failed"]),
            "address": self.rng.choice(["127.0.0.1", "::1", "10.0.0.7"]),
            "count": self.rng.randint(0, 40),
            "path": self.rng.choice(["/v1/kv/x", "/", "/v1/saves/a" + "b" * 100]),
        }

    def valid(self) -> dict[str, Any]:
        makers: list[tuple[float, Callable[[], dict[str, Any]]]] = [
            (30, self._put),
            (6, self._delete),
            (10, self._txn),
            (8, self._undo),
            (3, self._save),
            (3, self._restore),
            (1, self._delete_save),
            (2, self._import),
            (2, self._resolve),
            (0.3, self._compact),
            (2, self._security),
        ]
        maker = self.rng.choices([m for _, m in makers], [w for w, _ in makers])[0]
        return self.decorate(maker())

    def decorate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        r = self.rng
        self.time += r.randint(0, 40)
        cmd["author"] = r.choice(AUTHORS)
        cmd["node"] = r.choice(NODES)
        role = r.random()
        if role < 0.45:
            cmd["role"] = "admin"
        elif role < 0.75:
            cmd["role"] = "operator"
        elif role < 0.8:
            cmd["role"] = "reader"
        t = r.random()
        cmd["time"] = self.time if t < 0.9 else self.time + r.randint(-100_000, 100_000)
        if r.random() < 0.5:  # as a controller splices it in
            cmd["hlc"] = f"{self.time:015d}.{r.randint(0, 3):06d}.{r.choice(NODES)}"
        if r.random() < 0.3:
            if self.rids and r.random() < 0.2:
                cmd["rid"] = r.choice(self.rids)  # a retried copy
            else:
                rid = f"n{r.randint(1, 3)}.boot.{self.n}"
                self.rids.append(rid)
                cmd["rid"] = rid
        return cmd

    # -- corruptions -----------------------------------------------------------------------

    def deep(self) -> bytes:
        r = self.rng
        n = r.choice([r.randint(60, 70), r.randint(250, 260), r.randint(200, 1100)])
        cmd = self.valid()
        where = r.random()
        if where < 0.4:
            cmd = self.decorate({"op": "put", "key": r.choice(KEYS), "value": _DEEP.format(n)})
        elif where < 0.55:
            ops = [
                {"op": "put", "key": "parameters/a", "value": 1},
                {"op": "put", "key": "parameters/b/c", "value": _DEEP.format(n)},
            ]
            cmd = self.decorate({"op": "txn", "ops": ops})
        elif where < 0.7:
            comps = {"parameters": {"parameters/a": _DEEP.format(n)}}
            doc = {"format": "hana-save", "schema_version": 2, "name": "imported", "cluster": "c", "revision": 1}
            doc |= {"created": 1, "components": comps, "sha256": "0" * 64}
            text = _splice_deep(orjson.dumps(doc)).decode()
            cmd = self.decorate({"op": "import_save", "role": "admin"})
            if r.random() < 0.5:
                cmd["file"] = text
            else:
                cmd["doc"] = doc
        else:
            field = r.choice(sorted(cmd))
            cmd[field] = _DEEP.format(n)
        return _splice_deep(orjson.dumps(cmd))

    def huge(self) -> bytes:
        r = self.rng
        size = MAX_VALUE_BYTES - 2 + r.choice([-1000, -1, 0, 1, 2, 100])
        cmd = self.decorate({"op": "put", "key": "parameters/huge", "value": "h" * size})
        return orjson.dumps(cmd)

    def oversize(self) -> bytes:
        cmd = orjson.dumps(self.decorate({"op": "put", "key": "parameters/a", "value": 1}))
        return cmd[:-1] + b" " * (MAX_COMMAND_BYTES - len(cmd) + self.rng.randint(1, 3)) + b"}"

    def wrong_type(self) -> bytes:
        cmd = self.valid()
        r = self.rng
        target: dict[str, Any] = cmd
        if cmd.get("op") == "txn" and r.random() < 0.5:
            target = r.choice(cmd["ops"])
        field = r.choice(sorted(target))
        target[field] = r.choice(WEIRD) if r.random() < 0.9 else _DEEP.format(r.randint(2, 900))
        return _splice_deep(orjson.dumps(cmd))

    def unknown(self) -> bytes:
        cmd = self.valid()
        r = self.rng
        if r.random() < 0.5:
            cmd["op"] = r.choice(["frobnicate", "PUT", "", "put ", "__class__", "_op_put", "apply", "snapshot"])
        else:
            cmd[r.choice(["zzz", "value2", "__dict__", "Op"])] = r.choice(WEIRD)
        return orjson.dumps(cmd)

    def mangled(self) -> bytes:
        data = bytearray(orjson.dumps(self.valid()))
        r = self.rng
        how = r.random()
        if how < 0.3:
            return bytes(data[: r.randint(0, len(data))])
        if how < 0.6:
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] = r.randrange(256)
            return bytes(data)
        if how < 0.8:  # invalid UTF-8 or an encoded lone surrogate inside a string
            i = data.find(b'":"')
            bad = r.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\\ud800", b"\\udfff\\u0000"])
            return bytes(data[: i + 3]) + bad + bytes(data[i + 3 :]) if i >= 0 else bytes(data) + bad
        return r.randbytes(r.randint(0, 64))

    def confish(self) -> bytes:
        r = self.rng
        choices = [
            ConfChange(ConfChangeType.ADD_VOTER, "n9").encode(),
            ConfChange(ConfChangeType.REMOVE_NODE, r.choice(["a", "b", "c"])).encode(),
            ConfChange(ConfChangeType.ADD_LEARNER, "n4", context={"author": "eve", "address": "10.0.0.66"}).encode(),
            ConfChange(ConfChangeType.BOOTSTRAP, conf=ConfState.of(["x"])).encode(),
            b'{"type":"promote_learner","node":' + b"[" * 500 + b"]" * 500 + b"}",
        ]
        return r.choice(choices)

    def odd(self) -> bytes:
        r = self.rng
        cmd = self.decorate({"op": "put", "key": r.choice(ODD_KEYS), "value": self.value()})
        how = r.random()
        if how < 0.3:  # duplicate keys: the last one wins, on every node alike
            return b'{"op":"delete","op":"put",' + orjson.dumps(cmd)[1:]
        if how < 0.5:
            cmd["expected_version"] = r.choice([0, (1 << 63) - 1, (1 << 64) - 1, -1])
        elif how < 0.7:
            cmd["author"] = r.choice(["x" * 256, "x" * 257, "😀" * 100, ""])
        elif how < 0.85:
            cmd["time"] = r.choice([-(1 << 63), (1 << 63) - 1, (1 << 64) - 1, 1 << 62])
        else:
            return orjson.dumps(cmd).replace(b'"value":', b'"value":' + b" " * 10, 1) + b"\n\t "
        return orjson.dumps(cmd)

    def next(self) -> bytes:
        self.n += 1
        r = self.rng.random()
        if r < 0.55:
            return _splice_deep(orjson.dumps(self.valid()))
        if r < 0.6:
            return self.deep()
        if r < 0.72:
            return self.wrong_type()
        if r < 0.76:
            return self.unknown()
        if r < 0.86:
            return self.mangled()
        if r < 0.89:
            return self.confish()
        if r < 0.97:
            return self.odd()
        if r < 0.975 and self.huge_left:
            self.huge_left -= 1
            return self.huge()
        if r < 0.976 and self.oversize_left:
            self.oversize_left -= 1
            return self.oversize()
        # Plain JSON that is not an object.
        return self.rng.choice([b"null", b"1", b'"put"', b"[]", b'[{"op":"put"}]', b"{}", b"true", b" "])

    def entries(self, n: int) -> Iterator[bytes]:
        for _ in range(n):
            yield self.next()
