"""The README and docs/ pages point at what exists: every relative link (and its #anchor) resolves, every
repository path they name in backticks is there, the Python examples import real names, and every study in
benchmarks/studies/ states its question and keeps its results beside it. Moving a file or a section without its
references fails here."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "cluster" / "README.md", ROOT / "benchmarks" / "studies" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]
STUDIES = sorted((ROOT / "benchmarks" / "studies").glob("*.py"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TOP_LEVEL = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} | {".ci"}


def _prose(text: str) -> str:
    """The page without its fenced code blocks (examples hold paths of the user's data, not of this repo)."""
    return "".join(text.split("```")[0::2])


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in _prose(page.read_text()).splitlines() if line.startswith("#")}


def test_the_pages_exist():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"docs/results.md", "docs/performance.md", "docs/detection.md", "docs/mlflow.md", "docs/storage.md",
            "cluster/README.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    links = LINK.findall(_prose(page.read_text()))
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.relative_to(ROOT)}: {link} -> no such file"
        if anchor:
            assert target.suffix == ".md", f"{page.relative_to(ROOT)}: {link} -> an anchor into a non-page"
            assert anchor in _anchors(target), f"{page.relative_to(ROOT)}: {link} -> no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_repository_path_named_exists(page):
    """`benchmarks/results/train.json`, `tests/test_video.py`, ...: a path under one of the repo's own folders,
    relative to the repository root or to the page."""
    spans = re.findall(r"`([^`\s]+)`", _prose(page.read_text()))
    paths = [s for s in spans if "/" in s and not re.search(r"[*<>{}$:]", s) and s.split("/")[0] in TOP_LEVEL]
    for path in paths:
        assert (ROOT / path).exists() or (page.parent / path).exists(), f"{page.relative_to(ROOT)}: `{path}`"


def test_the_readme_links_every_docs_page():
    links = {(ROOT / link.partition("#")[0]).resolve() for link in LINK.findall((ROOT / "README.md").read_text())}
    assert set((ROOT / "docs").glob("*.md")) <= links


def test_the_readme_fits_on_a_few_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("script", STUDIES, ids=lambda p: p.name)
def test_a_study_states_its_question_and_keeps_its_results(script):
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert doc.startswith("Study: ") and "Question: " in doc and "Answer " in doc, script.name
    assert f"python benchmarks/studies/{script.name}" in doc  # run from the repository root
    results = re.findall(r"results/([\w.]+\.(?:json|md))", doc)
    assert results, f"{script.name} names no results file"
    for name in results:
        assert (script.parent / "results" / name).exists(), f"{script.name}: results/{name}"


def test_the_studies_import_from_their_folder():
    """Each study puts the repository root and benchmarks/ on sys.path itself, so `python
    benchmarks/studies/x.py` finds asrn, ablation.py and machine.py from any working directory."""
    saved_path = list(sys.path)
    try:
        for script in STUDIES:
            spec = importlib.util.spec_from_file_location(f"study_{script.stem}", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert module.RESULTS == script.parent / "results" and module.RESULTS.is_dir()
            assert callable(module.main)
    finally:
        sys.path[:] = saved_path
        for name in ("ablation", "machine", *(f"study_{s.stem}" for s in STUDIES)):  # benchmarks/ by bare name
            sys.modules.pop(name, None)


def test_the_python_examples_import_what_exists():
    """`from asrn.x import y` in a page's code blocks: a renamed module or function fails here, not in a reader's
    hands."""
    imports = [(module, name.strip()) for page in PAGES for block in page.read_text().split("```")[1::2]
               for module, names in re.findall(r"^from (asrn[\w.]*) import ([\w, ]+)$", block, re.M)
               for name in names.split(",")]
    assert imports  # docs/mlflow.md loads a logged model with them
    for module, name in imports:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
