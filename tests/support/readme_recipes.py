"""The README's copy-and-paste recipes, as the tests that try them read them: the first fenced block
after a `<!-- recipe: NAME ... -->` marker."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def recipe(name: str) -> str:
    text = README.read_text()
    match = re.search(r"<!-- recipe: " + re.escape(name) + r"\b[^>]*-->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert match, f"README.md has no recipe {name!r}"
    return match.group(1)
