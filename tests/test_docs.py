"""The docs: docs/keys.md is `we-train --keys`'s output, every relative link resolves, the front page stays short."""
import re
from pathlib import Path

import pytest

from we.train.cli import cli
from we.train.config import config_keys
from we.train.keyref import key_reference

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BEGIN, END = "<!-- begin: we-train --keys -->\n", "<!-- end: we-train --keys -->"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_keys_page_is_the_generated_reference():
    page = (ROOT / "docs" / "keys.md").read_text()
    assert BEGIN in page and END in page
    held = page.split(BEGIN, 1)[1].split(END, 1)[0]
    assert held == key_reference(), "docs/keys.md is stale: rewrite its table with `python -m we.train --keys`"


def test_keys_reference_has_a_row_with_a_meaning_for_every_key(capsys):
    assert cli(["--keys"]) == 0
    rows = {ln.split("|")[1].strip(" `"): ln for ln in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == list(config_keys())
    assert all(ln.rstrip(" |").split("|")[-1].strip() for ln in rows.values())  # no empty meaning


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (lower case, punctuation dropped, spaces to hyphens)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in page.read_text().splitlines():
        in_code ^= line.startswith("```")
        if in_code or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files or anchors: {broken}"


def test_front_page_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
