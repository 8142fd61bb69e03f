"""``harness`` exports what a user's code uses, as docs/harness.md lists it; the rest is in
the submodules."""

from __future__ import annotations

import re
from pathlib import Path

import harness

DOCS = Path(__file__).resolve().parent.parent / "docs" / "harness.md"


def test_the_package_exports_what_the_docs_list_and_nothing_internal() -> None:
    text = DOCS.read_text(encoding="utf-8")
    paragraph = text[text.index("`harness` exports what a user's code uses") :].split("\n\n")[0]
    documented = set(re.findall(r"`([A-Za-z_]+)`", paragraph.split("The machinery")[0]))
    documented.discard("harness")
    assert set(harness.__all__) == documented
    assert all(hasattr(harness, name) for name in harness.__all__)
    for internal in ("run_in_subprocess", "SubprocessResult", "judge", "Judgement", "TypeGrowth"):
        assert not hasattr(harness, internal), internal
