"""Runs the Green Button Alliance's Download My Data function-block tests (FB_xx.xsl: Schematron
compiled to XSLT 1.0 by the GBA, from its OpenESPI Green Button data SDK, folder
GreenButtonBatchTest/GeneratedTests) on a document, with lxml. The files are not in this repository:
upstream states no licence for them (tests/gba/SOURCES.md says where they come from); they are read
from $OPENSEG_GBA_DIR, else tests/gba/, else ../shared/gba/ (the steering repo's shared folder, where
the project's data files from outside may be kept).

A generated test writes one `assert` element (with its TestID, e.g. D062) for every assertion that
failed; a clean result has none.
"""
from __future__ import annotations

import os
from pathlib import Path

from lxml import etree

BLOCKS = ("FB_01", "FB_04", "FB_05", "FB_06", "FB_08", "FB_09")


def _gba_dir() -> Path:
    if os.environ.get("OPENSEG_GBA_DIR"):
        return Path(os.environ["OPENSEG_GBA_DIR"])
    here = Path(__file__).parents[1] / "gba"
    shared = Path(__file__).resolve().parents[3] / "shared" / "gba"
    return shared if not (here / f"{BLOCKS[0]}.xsl").is_file() and shared.is_dir() else here


GBA_DIR = _gba_dir()


def missing() -> list[str]:
    return [b for b in BLOCKS if not (GBA_DIR / f"{b}.xsl").is_file()]


_compiled: dict[str, etree.XSLT] = {}


def failed(block: str, document: bytes) -> list[str]:
    """The TestIDs of the assertions of `block` that `document` fails."""
    xslt = _compiled.get(block)
    if xslt is None:
        xslt = _compiled[block] = etree.XSLT(etree.parse(str(GBA_DIR / f"{block}.xsl")))
    result = xslt(etree.fromstring(document))
    return [a.get("TestID") for a in result.getroot().iter("assert")]
