"""README.md's relative links and images point to files that exist; the docs site's nav and README stay in shape.

(mkdocs build --strict, run by .ci/run, checks the links between docs/ pages; GitHub renders README.md, whose links
go to docs/*.md and other files of the repo: this checks those.)
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _outside_code(text: str) -> str:
    """The text without fenced blocks and inline code (a link shown as code is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(_outside_code(text)) if not re.match(r"[a-z]+:|#|//", t)]


def test_every_relative_link_and_image_of_the_readme_exists():
    links = relative_links(README.read_text())
    assert len(links) > 10
    missing = [t for t in links if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_link_check_sees_a_missing_file():
    assert relative_links("see [x](docs/nope.md), ![p](docs/img/a.png), [web](https://x.y), `[c](no.md)`") == [
        "docs/nope.md", "docs/img/a.png"]


def test_readme_is_short_and_in_the_agreed_order():
    text = README.read_text()
    assert text.count("\n") <= 250
    heads = [h for h in re.findall(r"^## (.+)$", _outside_code(text), flags=re.M)]
    assert heads == ["Install", "Does it fit on my GPU?", "Profile your own run", "How accurate is it?",
                     "How it works", "Documentation"], heads
    assert "```mermaid" in text


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: suffix)


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    conf = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_Loader)
    pages = _nav_pages(conf["nav"])
    on_disk = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert sorted(pages) == on_disk, (sorted(set(on_disk) - set(pages)), sorted(set(pages) - set(on_disk)))
    fences = next(e["pymdownx.superfences"] for e in conf["markdown_extensions"]
                  if isinstance(e, dict) and "pymdownx.superfences" in e)["custom_fences"]
    assert any(f["name"] == "mermaid" for f in fences)  # the README's data-flow picture renders on the site too
