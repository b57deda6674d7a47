"""Where the documentation lives, for the tests that read it: README.md is the newcomer's short path
and docs/<topic>.md the rest, each English page with a Chinese twin (README_zh.md,
docs/<topic>_zh.md). A test that checks what the documentation says reads all of one language, so
a passage moved between pages is still found."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def english_pages() -> list[Path]:
    return [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if not p.stem.endswith("_zh"))]


def chinese_twin(page: Path) -> Path:
    return page.with_name("README_zh.md") if page.name == "README.md" else page.with_name(f"{page.stem}_zh.md")


def page_pairs() -> list[tuple[Path, Path]]:
    """(English page, its Chinese twin), README first."""
    return [(page, chinese_twin(page)) for page in english_pages()]


def pages(language: str) -> list[Path]:
    english = english_pages()
    return english if language == "en" else [chinese_twin(page) for page in english]


def text(language: str) -> str:
    """Every page of one language ("en" or "zh"), joined."""
    return "\n\n".join(page.read_text(encoding="utf-8") for page in pages(language))
