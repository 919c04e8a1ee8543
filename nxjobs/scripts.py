"""The Lua scripts: one file each under nxjobs/lua/, read once, handed out ready to run.

Each file opens with a comment block: what it does, its KEYS and ARGV, what it returns and, for
a script that writes a job's `state`, the moves it makes (`-- moves: running -> submitted, ...`;
`new` is a job with no record yet). Two directives are resolved when a script is first loaded:

- `--#include lib/x.lua` puts that file's text in its place, once per script: a later include
  of the same file is dropped, so a wrapper can hoist a library above a per-entry function.
- `--#render NAME` puts a Lua statement built from Python data in its place: `fields` (the
  record field names of nxjobs.keys, as table FIELD) and `states` (the transition table of
  nxjobs.store as ALLOWED_FROM, and the moves the script and its includes declare as MOVES),
  `keys` (the key names of nxjobs.keys that lib/state.lua and lib/items.lua derive, as table
  KEY, the set INDEXED of nxjobs.keys.INDEXED_STATES, and job_index_key(kind, state) and
  finished_count(kind, state) built from nxjobs.keys.job_index and .finished_count).
  A script that writes `state` loads only with that table, which only the store hands in.

No script spells a key: it gets each one as KEYS, or a prefix built by nxjobs.keys as an ARGV
where it must derive keys itself (members of a batch, a job found by its id). The one exception
is set_state (lib/state.lua), which every state write shares: it touches the job indexes, the
retention hash and the job's payload and items keys without them in KEYS, named by the `keys`
render (so the store's scripts run on one Redis, never a cluster slot per key); lib/items.lua
derives a job's items hash the same way.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from nxjobs import keys

NEW = "new"  # how a move from "no record yet" is written in a `-- moves:` line
_INCLUDE = re.compile(r"^--#include\s+(\S+)\s*$")
_RENDER = re.compile(r"^--#render\s+(\S+)\s*$")
_MOVES = re.compile(r"^--\s*moves:(.*)$")
_MOVE = re.compile(r"^\s*([a-z]+)\s*->\s*([a-z]+)\s*$")
# Key names of nxjobs.keys set_state and lib/items.lua derive (rendered as KEY.<name>).
KEY_NAMES = (
    "JOB_KEY_PREFIX",
    "JOB_PAYLOAD_SUFFIX",
    "JOB_ITEMS_SUFFIX",
    "RETENTION",
    "METRICS_COUNTERS",
    "MEMBER_INDEX_SHARD_SEP",
    "EVENTS",
    "EVENTS_SETTINGS",
    "JOB_CHANNEL_PREFIX",
)
# Record fields named in nxjobs.keys that scripts read or write (rendered as FIELD.<name>).
FIELD_NAMES = (
    "CALLBACK_FIELD",
    "UNIT_FIELD",
    "PROOF_ID",
    "PROOF_SEEN",
    "PROOF_BATCH",
    "PROOF_TASK",
    "PROOF_ORDERS",
    "PROOF_TASKS",
    "PHONE_FIELD",
    "ORDER_FIELD",
    "COMPLETION_MARKER",
    "CALLBACKS_PAGED",
    "ITEM_FIELD",
    "CALLBACKS_SUMMARY",
    "CAMPAIGN_FIELD",
    "MEMBER_CALLBACK_FIELD",
    "MEMBER_INDEX_SHARDS",
)


class ScriptError(Exception):
    """A script file is missing or malformed, or declares a move the transition table lacks."""


@dataclass(frozen=True)
class Loaded:
    name: str  # path under nxjobs/lua/ without `.lua`, e.g. "coalesce_fan_out"
    source: str  # the Lua text sent to Redis, directives resolved
    sha: str  # what EVALSHA names it by
    # (from, to) state moves the script and its includes declare; from "" = no record yet.
    moves: frozenset[tuple[str, str]]


def names() -> list[str]:
    """Every script a caller can load (the files of nxjobs/lua/lib/ are only included)."""
    return sorted(p.name[:-4] for p in _root().iterdir() if p.name.endswith(".lua"))


def files() -> list[str]:
    """Every .lua file, as a path under nxjobs/lua/ (lib/ included)."""
    out = [p.name for p in _root().iterdir() if p.name.endswith(".lua")]
    out += ["lib/" + p.name for p in _root().joinpath("lib").iterdir() if p.name.endswith(".lua")]
    return sorted(out)


def text(path: str) -> str:
    """One file as written (directives unresolved)."""
    node = _root()
    for part in path.split("/"):
        node = node.joinpath(part)
    if not node.is_file():
        raise ScriptError(f"no Lua file nxjobs/lua/{path}")
    return node.read_text(encoding="utf-8")


def declared_moves(path: str) -> frozenset[tuple[str, str]]:
    """The moves one file declares in its `-- moves:` lines (its includes not counted)."""
    out = set()
    for line in text(path).splitlines():
        found = _MOVES.match(line.strip())
        if not found:
            continue
        for item in found.group(1).split(","):
            move = _MOVE.match(item)
            if not move:
                raise ScriptError(
                    f"nxjobs/lua/{path}: bad move {item.strip()!r} (write `from -> to`)"
                )
            frm, to = move.groups()
            out.add(("" if frm == NEW else frm, to))
    return frozenset(out)


Moves = frozenset[tuple[str, str]]  # (from, to) state pairs; from "" = no record yet


@functools.cache
def load(name: str, table: Moves | None = None) -> Loaded:
    """The script `name` (nxjobs/lua/<name>.lua), read and resolved once per process. `table` is
    the transition table a script that writes `state` is rendered with: only the record store
    passes it (nxjobs.store.register_script), so every state write goes through the store."""
    parts: list[str] = []
    included: list[str] = []
    moves: set[tuple[str, str]] = set()
    _expand(name + ".lua", parts, included, moves, ())
    if moves and table is None:
        raise ScriptError(
            f"nxjobs/lua/{name}.lua writes a job's state: load it through "
            "nxjobs.store.register_script, which owns the transition table"
        )
    for frm, to in sorted(moves):
        if (frm, to) not in (table or ()):
            raise ScriptError(
                f"nxjobs/lua/{name}.lua declares {frm or NEW} -> {to}, which "
                "nxjobs.store.ALLOWED_FROM does not allow"
            )
    frozen = frozenset(moves)
    lines = "\n".join(parts).splitlines()
    source = "\n".join(_render(line, frozen, table or frozenset()) for line in lines) + "\n"
    return Loaded(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest(), frozen)


def register(client: Any, name: str, table: Moves | None = None) -> Any:
    """`name` registered on a sync redis client: calling it runs EVALSHA, loading it on NOSCRIPT."""
    return client.register_script(load(name, table).source)


class AsyncScript:
    """`name` for a redis.asyncio client: loaded with SCRIPT LOAD on first use, run by EVALSHA,
    and loaded again when Redis answers NOSCRIPT (it restarted and forgot it)."""

    def __init__(self, name: str, table: Moves | None = None):
        self.script = load(name, table)
        self.sha: str | None = None

    async def __call__(
        self, client: Any, keys_: Iterable[str] = (), args: Iterable[Any] = ()
    ) -> Any:
        keys_, args = list(keys_), list(args)
        if self.sha is None:
            self.sha = await client.script_load(self.script.source)
        try:
            return await client.evalsha(self.sha, len(keys_), *keys_, *args)
        except NoScriptError:
            self.sha = await client.script_load(self.script.source)
            return await client.evalsha(self.sha, len(keys_), *keys_, *args)


def render_states(moves: Iterable[tuple[str, str]], table: Moves) -> str:
    """The `states` directive: the whole table, and the moves of the script being loaded."""
    return (
        "local ALLOWED_FROM = " + _lua_sets(_by_target(table)) + "\n"
        "local MOVES = " + _lua_sets(_by_target(moves))
    )


def render_fields() -> str:
    pairs = (f"{name} = {_lua_str(getattr(keys, name))}" for name in FIELD_NAMES)
    drops = ", ".join(_lua_str(name) for name in keys.COMPLETED_MEMBER_DROPS)
    return (
        "local FIELD = {" + ", ".join(pairs) + "}\nlocal COMPLETED_MEMBER_DROPS = {" + drops + "}"
    )


def render_keys() -> str:
    pairs = (f"{name} = {_lua_str(getattr(keys, name))}" for name in KEY_NAMES)
    indexed = ", ".join(f"[{_lua_str(state)}] = true" for state in keys.INDEXED_STATES)
    return (
        "local KEY = {" + ", ".join(pairs) + "}\n"
        "local INDEXED = {"
        + indexed
        + "}\n"
        + "local EVENT_STATES = {"
        + ", ".join(f"[{_lua_str(state)}] = true" for state in keys.EVENT_STATES)
        + "}\n"
        + f"local EVENTS_MAXLEN_DEFAULT = {int(keys.EVENTS_MAXLEN_DEFAULT)}\n"
        + _lua_kind_state_fn("job_index_key", keys.job_index)
        + "\n"
        + _lua_kind_state_fn("finished_count", keys.finished_count)
        + f"\nlocal MEMBER_INDEX_SHARD_SIZE = {int(keys.MEMBER_INDEX_SHARD_SIZE)}"
    )


def _lua_kind_state_fn(name: str, build: Any) -> str:
    """A Lua function (kind, state) -> the string `build` makes of them, its shape taken from
    `build` itself (split around its arguments), so the two cannot disagree."""
    head, rest = build("\x01", "\x02").split("\x01")
    middle, tail = rest.split("\x02")
    body = " .. ".join(
        part
        for part in (_lua_str(head), "kind", _lua_str(middle), "state", _lua_str(tail))
        if part != "''"
    )
    return f"local function {name}(kind, state) return {body} end"


def _root() -> Any:
    return resources.files("nxjobs").joinpath("lua")


def _expand(
    path: str, parts: list[str], included: list[str], moves: set, stack: tuple[str, ...]
) -> None:
    if path in stack:
        raise ScriptError(f"nxjobs/lua/{path} includes itself ({' -> '.join(stack + (path,))})")
    if path in included:
        return
    included.append(path)
    moves.update(declared_moves(path))
    for line in text(path).splitlines():
        found = _INCLUDE.match(line.strip())
        if found:
            _expand(found.group(1), parts, included, moves, stack + (path,))
        else:
            parts.append(line)


def _render(line: str, moves: Moves, table: Moves) -> str:
    found = _RENDER.match(line.strip())
    if not found:
        return line
    what = found.group(1)
    if what == "states":
        return render_states(moves, table)
    if what == "fields":
        return render_fields()
    if what == "keys":
        return render_keys()
    raise ScriptError(f"unknown directive --#render {what}")


def _by_target(moves: Iterable[tuple[str, str]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for frm, to in moves:
        out.setdefault(to, set()).add(frm)
    return {to: frozenset(froms) for to, froms in out.items()}


def _lua_sets(table: dict[str, frozenset[str]]) -> str:
    rows = [
        f"[{_lua_str(to)}] = {{" + ", ".join(f"[{_lua_str(f)}] = true" for f in sorted(froms)) + "}"
        for to, froms in sorted(table.items())
    ]
    return "{" + ", ".join(rows) + "}"


def _lua_str(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_:.|\- ]*", value):
        raise ScriptError(f"cannot render {value!r} as a Lua string")
    return "'" + value + "'"
