"""The README and docs/ point at things that exist: every relative link names a file in the checkout and, with an
anchor, a heading of that file (GitHub's slugs); and the README stays short enough to read to the end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the text may hold `code` or nested brackets one level deep.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """The page without fenced blocks and inline code, where brackets and `#` lines are not Markdown."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links reduced to their text), lowercase, punctuation dropped but '-'
    and '_', spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            # A repeated heading gets -1, -2, ... as on GitHub.
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(prose(page.read_text()))]


def test_slugs_follow_github():
    assert slug("The DETR paper's Table 1, measured here (batch 1)") == "the-detr-papers-table-1-measured-here-batch-1"
    assert slug("`vitexport repo`, `serve`, `infer`") == "vitexport-repo-serve-infer"
    assert slug("Detectors (DETR)") == "detectors-detr"
    assert slug("Where to go next") == "where-to-go-next"


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "x.md"
    page.write_text(
        "See [a](a.md#b) and ![plot](p.png) and [`code` text](c.md).\n"
        "`[not](a link)`\n```\n[nor](this.md)\n# not a heading\n```\n# A heading\n"
    )
    assert links(page) == ["a.md#b", "p.png", "c.md"]
    assert anchors(page) == {"a-heading"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert page.is_file()
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: -- not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor in {file.relative_to(ROOT)}")
    assert not broken, broken


def test_the_readme_links_every_docs_page():
    readme = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in readme]
    assert not unlinked, unlinked


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220
