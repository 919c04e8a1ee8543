"""Static checks of the Lua scripts in nxjobs/lua/ (no Redis needed)."""

from __future__ import annotations

import inspect
import re

import pytest

from nxjobs import keys, scripts


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
                    buf.append(source[j:j + 2])
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
    for name, value in vars(keys).items():
        if inspect.isfunction(value) and value.__module__ == keys.__name__:
            params = inspect.signature(value).parameters.values()
            built.append(value(*[sentinel] * sum(p.default is p.empty for p in params)))
        elif isinstance(value, str):
            built.append(value)
    return {part for key in built if key.startswith(keys.PREFIX + ":")
            for part in key.split(":") if part and sentinel not in part}


def test_the_lua_string_reader_finds_literals_and_skips_comments():
    assert lua_strings("""-- 'not this'\nlocal a = 'x:y' .. "z" -- 'nor this'\nb('a\\'b')""") == \
        ["x:y", "z", "a\\'b"]


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
        assert "--#" not in scripts.load(name).source, f"{name}: directive left unresolved"
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
