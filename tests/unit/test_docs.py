"""Every provider citation in the code resolves inside the repository (docs/provider.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"§\s?(\d+(?:\.\d+)?)")


def _sections() -> set[str]:
    text = (ROOT / "docs" / "provider.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", text, flags=re.MULTILINE))


def test_every_section_cited_in_the_code_has_a_heading_in_docs_provider():
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.toml", "*.yml", "README.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    sections = _sections()
    missing = []
    for name in tracked:
        for n, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1):
            missing += [f"{name}:{n}: §{s}" for s in CITATION.findall(line) if s not in sections]
    assert not missing, "cited but not in docs/provider.md:\n" + "\n".join(missing)


def test_the_section_pattern_finds_what_it_must():
    assert CITATION.findall("(docs/provider.md §5.4, §6.6, §7.3/7.4)") == ["5.4", "6.6", "7.3"]
