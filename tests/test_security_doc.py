"""SECURITY.md's traceability table (§3a) is the one deploy/trace.py makes from the code as it is now, so
its line numbers and rows cannot drift from the code they cite."""
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_traceability_table_in_security_md_is_current():
    spec = importlib.util.spec_from_file_location("deploy_trace", ROOT / "deploy" / "trace.py")
    trace = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = trace          # dataclasses look their module up there
    spec.loader.exec_module(trace)
    table = trace.table()
    assert table.count("\n") == len(trace.ROWS) + 1
    assert table in (ROOT / "SECURITY.md").read_text(), \
        "SECURITY.md §3a is stale: paste `.venv/bin/python deploy/trace.py --table` into it"
