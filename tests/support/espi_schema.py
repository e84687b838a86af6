"""Validation against the official Green Button schema (usage.xsd, ESPI 3.3) for the tests.

The schema and its validate.py live outside the repository, in $OPENSEG_ESPI_DIR or else
<repo>/../shared/espi. If neither holds them this module fails at import, loudly: an ESPI test that
silently skipped validation would prove nothing.
"""
from __future__ import annotations

import importlib.util
import os

from lxml import etree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ESPI_DIR = os.environ.get("OPENSEG_ESPI_DIR") or os.path.join(os.path.dirname(REPO), "shared", "espi")
_VALIDATE = os.path.join(ESPI_DIR, "validate.py")

if not (os.path.isfile(_VALIDATE) and os.path.isfile(os.path.join(ESPI_DIR, "usage.xsd"))):
    raise RuntimeError(
        f"ESPI schema not found: expected validate.py and usage.xsd in {ESPI_DIR!r}. "
        "Set OPENSEG_ESPI_DIR to the directory holding the Green Button schema (shared/espi).")

_spec = importlib.util.spec_from_file_location("openseg_espi_validate", _VALIDATE)
validate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate)


def assert_valid(document: bytes) -> etree._Element:
    """Parse an ESPI answer and assert it validates against usage.xsd; return the parsed root."""
    root = etree.fromstring(document, etree.XMLParser(no_network=True, resolve_entities=False))
    schema = validate.schema()
    if not schema.validate(root):
        errors = "\n".join(f"  line {e.line}: {e.message}" for e in list(schema.error_log)[:10])
        raise AssertionError(f"ESPI document does not validate against usage.xsd:\n{errors}")
    return root
