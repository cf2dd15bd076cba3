"""The README and docs/ as a set of pages: every link goes to a file and a heading that exist,
every file path they name exists, the README stays a front door (short, its layout table naming
every module), and each docs page is linked from it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "audit").glob("**/*.md")),
         ROOT / "weights" / "tiny-books" / "README.md", ROOT / "weights" / "toxicity-davidson" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"`((?:minigpt|actadd|tests|benchmarks|scripts|docs|weights)/[\w./-]*)`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)   # no headings in code
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_slug_is_githubs():
    assert slug("Model families: GPT-2, OPT and LLaMA") == "model-families-gpt-2-opt-and-llama"
    assert slug("Evaluating ActAdd: the paper's experiments") == "evaluating-actadd-the-papers-experiments"
    assert slug("On a GPU (CuPy)") == "on-a-gpu-cupy"


def test_every_link_goes_to_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue                                                      # https://, mailto:
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {path.name})")
    assert broken == []


def test_every_path_the_pages_name_exists():
    missing = []
    for page in PAGES:
        for path in PATH.findall(page.read_text(encoding="utf-8")):
            if "*" in path or "{" in path:
                continue                                                      # a pattern, not a file
            source = re.sub(r"^minigpt/checkpoints", "weights", path)         # installed from weights/ (pyproject)
            if not (ROOT / source.rstrip("/")).exists():
                missing.append(f"{page.relative_to(ROOT)}: `{path}`")
    assert missing == []


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    modules = [p.relative_to(ROOT).as_posix() for package in ("minigpt", "actadd") for p in (ROOT / package).rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")]
    table = readme.split("## Layout", 1)[1]
    assert [m for m in modules if f"`{m}`" not in table] == []             # every module has its line
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", readme))
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}          # every page is reachable


def test_a_missing_book_says_where_to_get_it(tmp_path):
    """Before: the walkthrough, run from a fresh clone, stopped at FileNotFoundError
    '../shared/corpora/gutenberg/pg2701.txt' with no word of where the books come from."""
    import minigpt
    from minigpt.checkpoints import held_out_chunks

    _, tok = minigpt.load("tiny-books")
    with pytest.raises(FileNotFoundError, match="pg2701.txt: no such book file .* docs/data.md says where to get them"):
        held_out_chunks(tok, tmp_path / "pg2701.txt")
