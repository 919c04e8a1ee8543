"""Static checks of the Lua scripts in nxjobs/lua/ (no Redis needed)."""

from __future__ import annotations

import inspect
import re

import pytest

from nxjobs import keys, scripts
from nxjobs.store import load_script


def lua_strings(source: str) -> list[str]:
    """The string literals of a Lua source, comments skipped (the scripts use no long strings)."""
    out, i, n = [], 0, len(source)
    while i < n:
        ch = source[i]
        if source.startswith("--", i):
            i = source.find("\n", i)
            i = n if i < 0 else i
        elif ch in "'\"":
            j, buf = i + 1, []
            while source[j] != ch:
                if source[j] == "\\":
                    buf.append(source[j : j + 2])
                    j += 2
                else:
                    buf.append(source[j])
                    j += 1
            out.append("".join(buf))
            i = j + 1
        else:
            i += 1
    return out


def key_segments() -> set[str]:
    """Every ':'-separated word of the key names nxjobs.keys builds (`job`, `cb`, `coalesce`...)."""
    sentinel = "\x00"
    built = []
    for value in vars(keys).values():
        if inspect.isfunction(value) and value.__module__ == keys.__name__:
            params = inspect.signature(value).parameters.values()
            built.append(value(*[sentinel] * sum(p.default is p.empty for p in params)))
        elif isinstance(value, str):
            built.append(value)
    return {
        part
        for key in built
        if key.startswith(keys.PREFIX + ":")
        for part in key.split(":")
        if part and sentinel not in part
    }


def test_the_lua_string_reader_finds_literals_and_skips_comments():
    assert lua_strings("""-- 'not this'\nlocal a = 'x:y' .. "z" -- 'nor this'\nb('a\\'b')""") == [
        "x:y",
        "z",
        "a\\'b",
    ]


def test_the_key_segments_cover_the_job_and_index_prefixes():
    assert {"job", "cb", "idx", "nc-num", "coalesce", keys.PREFIX} <= key_segments()


@pytest.mark.parametrize("path", scripts.files())
def test_no_lua_file_spells_a_key(path):
    # Keys come as KEYS, or as a prefix nxjobs.keys built (an ARGV): Lua and Python cannot drift.
    segments = key_segments()
    for literal in lua_strings(scripts.text(path)):
        assert keys.PREFIX not in literal, f"{path}: key prefix in {literal!r}"
        assert literal != ":", f"{path}: a key separator spelled in Lua"
        if ":" in literal:
            named = segments & set(literal.split(":"))
            assert not named, f"{path}: {literal!r} spells key words {sorted(named)}"


def test_every_script_loads_and_every_lib_file_is_used():
    for name in scripts.names():
        source = load_script(name).source
        assert "--#" not in source, f"{name}: directive left unresolved"
    everything = "\n".join(scripts.text(p) for p in scripts.files())
    included = set(re.findall(r"^--#include\s+(\S+)", everything, re.M))
    assert {p for p in scripts.files() if p.startswith("lib/")} <= included


@pytest.mark.parametrize("path", scripts.files())
def test_each_file_opens_with_what_it_does_its_arguments_and_its_reply(path):
    head = []
    for line in scripts.text(path).splitlines():
        if not line.startswith("--") or line.startswith("--#"):
            break
        head.append(line)
    assert head, f"{path}: no header comment"
    if not path.startswith("lib/"):
        text = "\n".join(head)
        assert "KEYS" in text and "ARGV" in text, f"{path}: header does not map KEYS and ARGV"
        assert "Returns" in text, f"{path}: header does not say what it returns"


def test_an_include_is_resolved_once_and_a_cycle_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(scripts, "_root", lambda: tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.lua").write_text("local A = 1\n")
    (tmp_path / "twice.lua").write_text("--#include lib/a.lua\n--#include lib/a.lua\nreturn A\n")
    (tmp_path / "loop.lua").write_text("--#include loop.lua\n")
    scripts.load.cache_clear()
    try:
        assert scripts.load("twice").source == "local A = 1\nreturn A\n"
        with pytest.raises(scripts.ScriptError, match="includes itself"):
            scripts.load("loop")
    finally:
        scripts.load.cache_clear()


# ---- one state machine -----------------------------------------------------------------

STATE_LIB = "lib/state.lua"
READS = {"HGET", "HMGET"}


def redis_calls(source: str) -> list[tuple[str, list[str]]]:
    """(command, string literals among its arguments) of each redis.call in `source`."""
    out = []
    for found in re.finditer(r"redis\.call\(", source):
        depth, j = 1, found.end()
        while depth:
            if source[j] in "'\"":
                j = source.index(source[j], j + 1)
            depth += {"(": 1, ")": -1}.get(source[j], 0)
            j += 1
        literals = lua_strings(source[found.end() : j - 1])
        out.append((literals[0].upper() if literals else "", literals[1:]))
    return out


def set_state_targets(source: str) -> list[str]:
    """The second argument of each set_state call: a literal state, or '*' when computed."""
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    out = []
    for found in re.finditer(r"(?<!function )\bset_state\(\s*[^,]+,\s*('([a-z]+)'|[^,)]+)", code):
        out.append(found.group(2) or "*")
    return out


def table_pairs() -> set[tuple[str, str]]:
    from nxjobs.store import STATE_MOVES

    return set(STATE_MOVES)


def test_the_state_checks_read_what_they_must():
    src = "redis.call('HSET', jk, 'state', 'x') local a = redis.call('HMGET', jk, 'state', f(1))"
    assert redis_calls(src) == [("HSET", ["state", "x"]), ("HMGET", ["state"])]
    assert set_state_targets(
        "set_state(KEYS[1], 'failed', 'a', 1) -- set_state(x, 'queued')\n"
        "if set_state(jk, ARGV[1]) then"
    ) == ["failed", "*"]


@pytest.mark.parametrize("path", [p for p in scripts.files() if p != STATE_LIB])
def test_only_the_state_library_writes_state(path):
    source = scripts.text(path)
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    reads = sum(args.count("state") for cmd, args in redis_calls(source) if cmd in READS)
    # Every 'state' literal of the file sits in a read: none is written, nor held for a write.
    assert lua_strings(code).count("state") == reads, (
        f"{path} names the `state` field outside HGET/HMGET: write it through set_state"
    )


@pytest.mark.parametrize("path", scripts.files())
def test_each_script_declares_the_moves_it_makes_and_the_table_allows_them(path):
    source = scripts.text(path)
    declared = scripts.declared_moves(path)
    targets = set_state_targets(source)
    assert declared <= table_pairs(), f"{path} declares moves the table lacks"
    assert bool(declared) == bool(targets), f"{path}: set_state calls and `-- moves:` disagree"
    literal = {t for t in targets if t != "*"}
    assert literal <= {to for _, to in declared}, f"{path} moves to an undeclared state"
    if "*" in targets:
        # The target is the caller's: what it may be is the header's list, enforced by MOVES.
        assert {to for _, to in declared} - literal, f"{path}: its computed target is not declared"


def test_the_table_lists_no_move_that_no_script_or_the_store_makes():
    from nxjobs.store import CREATED_BY_STORE

    made = {("" if frm is None else frm.value, to.value) for frm, to in CREATED_BY_STORE}
    for path in scripts.files():
        made |= scripts.declared_moves(path)
    assert made == table_pairs()


def test_every_script_writing_state_renders_the_python_table():
    from nxjobs.store import ALLOWED_FROM, STATE_MOVES, load_script

    for name in scripts.names():
        loaded = load_script(name)
        if "set_state" not in loaded.source:
            continue
        assert scripts.render_states(loaded.moves, STATE_MOVES) in loaded.source
        assert loaded.moves <= table_pairs()
    assert {to for _, to in STATE_MOVES} == {s.value for s in ALLOWED_FROM}


def test_a_script_writing_state_loads_only_through_the_record_store():
    from nxjobs.store import load_script

    for name in scripts.names():
        if load_script(name).moves:
            with pytest.raises(scripts.ScriptError, match="nxjobs.store.register_script"):
                scripts.load(name)
        else:
            assert scripts.load(name).source == load_script(name).source


def test_a_move_the_table_lacks_is_refused_when_the_script_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(scripts, "_root", lambda: tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "back.lua").write_text("-- moves: completed -> running\nreturn 0\n")
    scripts.load.cache_clear()
    try:
        with pytest.raises(scripts.ScriptError, match="completed -> running"):
            scripts.load("back", frozenset({("queued", "running")}))
    finally:
        scripts.load.cache_clear()


def test_the_store_and_the_coalescing_queue_import_nothing_of_the_callbacks_package():
    # nxjobs.callbacks imports both: an import back would be a cycle.
    import ast
    from pathlib import Path

    root = Path(scripts.__file__).parent
    for path in [
        root / "store.py",
        root / "coalesce.py",
        root / "correlate.py",
        root / "scripts.py",
    ]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.startswith("nxjobs.callbacks") for n in names), (
                f"{path.name} imports {names}"
            )


def test_a_coalesced_member_reads_what_it_shares_from_its_batch_while_it_has_none_of_its_own():
    from nxjobs.store import _decode

    base = {
        "kind": "number-check",
        "state": "submitted",
        "created_at": "2026-12-02T00:00:00Z",
        "updated_at": "2026-12-02T00:00:00Z",
        "input": "{}",
        "request": "[]",
        "result": "",
        "callbacks_needed": "1",
        "coalesce_batch": "b1",
    }
    batch = {
        "request": '[{"endpoint":"/api/number/check"}]',
        "result": '{"requestId":"r1"}',
        "attempts": "2",
    }
    record = _decode(base, batch, job_id="j1")
    assert record.id == "j1" and record.attempts == 2
    assert record.request == [{"endpoint": "/api/number/check"}]
    assert record.result == {"requestId": "r1"}
    # A replayed member that ran on its own keeps its own request and result.
    own = _decode(
        {**base, "request": '[{"endpoint":"/own"}]', "result": '{"own":1}'}, batch, None, "j1"
    )
    assert own.request == [{"endpoint": "/own"}] and own.result == {"own": 1}
    # A completed member keeps no counts: it had its one callback of one.
    done = {k: v for k, v in base.items() if k != "callbacks_needed"}
    entry = '{"type":"number-check","source":"callback","received_at":"x","data":{}}'
    compact = _decode(
        {**done, "state": "completed", keys.CALLBACK_FIELD + "nc:r1-1": entry}, batch, None, "j1"
    )
    assert (compact.callbacks_needed, compact.callbacks_done, len(compact.callbacks)) == (1, 1, 1)
    # A batch that expired leaves the member's own (empty) fields.
    assert _decode(base, None, None, "j1").request == []


def test_the_indexed_states_are_the_live_states_of_the_record_model():
    from nxjobs.records import TERMINAL_STATES, JobState

    live = {s.value for s in JobState} - {s.value for s in TERMINAL_STATES}
    assert set(keys.INDEXED_STATES) == live
    rendered = scripts.render_keys()
    assert "local INDEXED = {" in rendered and "finished_count(kind, state)" in rendered
