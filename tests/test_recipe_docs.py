"""The recipe facts live in docs/recipes, and every citation of them points at a heading that exists."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "docs" / "recipes"
PAGES = ["encoder", "pretrain", "classification", "detection", "segmentation", "video", "clip"]
CITATION = re.compile(r"docs/recipes/([A-Za-z0-9_-]+\.md)(?:#([A-Za-z0-9_-]+))?")


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {heading_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", page.read_text(), re.M)}


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [REPO / f for f in out.splitlines()
            if f.endswith((".py", ".md", ".yaml", ".toml", ".cfg", ".txt")) and (REPO / f).is_file()]


def test_heading_anchor_follows_github_slugs():
    assert heading_anchor("IN-21K intermediate fine-tuning") == "in-21k-intermediate-fine-tuning"
    assert heading_anchor("Stage 1: Kinetics-722") == "stage-1-kinetics-722"
    assert heading_anchor("EVA-CLIP and open_clip") == "eva-clip-and-open_clip"


def test_every_recipe_page_exists_and_the_index_links_each_one():
    index = (RECIPES / "README.md").read_text()
    for page in PAGES:
        assert (RECIPES / f"{page}.md").is_file(), page
        assert f"]({page}.md)" in index, f"docs/recipes/README.md does not link {page}.md"


@pytest.mark.parametrize("page", PAGES)
def test_recipe_page_headings_are_unique(page):
    text = (RECIPES / f"{page}.md").read_text()
    headings = [heading_anchor(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)]
    duplicates = sorted({h for h in headings if headings.count(h) > 1})
    assert duplicates == [], f"docs/recipes/{page}.md: repeated headings {duplicates} make ambiguous links"


def test_every_citation_in_the_repository_points_at_an_existing_page_and_heading():
    broken = []
    for path in tracked_text_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for page, anchor in CITATION.findall(line):
                target = RECIPES / page
                where = f"{path.relative_to(REPO)}:{lineno}"
                if not target.is_file():
                    broken.append(f"{where}: docs/recipes/{page} does not exist")
                elif anchor and anchor not in anchors(target):
                    broken.append(f"{where}: docs/recipes/{page} has no heading #{anchor}")
    # links between the recipe pages themselves: ](page.md#anchor)
    for page in RECIPES.glob("*.md"):
        links = re.findall(r"\]\(([A-Za-z0-9_-]+\.md)(?:#([A-Za-z0-9_-]+))?\)", page.read_text())
        for target, anchor in links:
            if not (RECIPES / target).is_file():
                broken.append(f"{page.name}: link to missing {target}")
            elif anchor and anchor not in anchors(RECIPES / target):
                broken.append(f"{page.name}: {target} has no heading #{anchor}")
    assert broken == []


def test_no_file_cites_the_private_reference_notes():
    # REFERENCE.md is a private working file that users of the repository do not have
    pattern = re.compile(r"REFERENCE(\.md)?,? section", re.I)
    hits = [f"{path.relative_to(REPO)}:{n}" for path in tracked_text_files()
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if pattern.search(line) and path != Path(__file__).resolve()]
    assert hits == [], "cite docs/recipes/<page>.md#<heading> instead"
