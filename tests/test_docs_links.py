"""Every markdown link in README.md and docs/ stays inside the repository and resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"```.*?```", re.S)


def links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_links_are_relative_and_resolve(path: Path) -> None:
    for target in links(path):
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", target, re.I), f"{path.name}: link outside the repo: {target}"
        if target.startswith("#"):
            continue
        file_part = target.split("#", 1)[0]
        resolved = (path.parent / file_part).resolve()
        assert resolved.exists(), f"{path.relative_to(ROOT)}: {target} does not resolve"
        assert ROOT in resolved.parents or resolved == ROOT, f"{path.name}: {target} leaves the repository"


def test_the_link_checker_finds_links() -> None:
    assert "docs/guide.md" in links(ROOT / "README.md")
