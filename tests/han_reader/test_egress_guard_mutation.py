"""Mutation testing of the egress guard: every mutant of openseg/han_reader/egress_guard.py that mutmut makes is
killed by tests/han_reader/test_egress_guard.py, or is named below as equivalent, with the reason.

mutmut (from PyPI, in the test extras) mutates the code inside functions: comparisons, boolean
operators, numbers, slices, strings, arguments. The allow-list tables (AT_QUERIES, ZDO_REQUESTS,
METERING_ATTRIBUTES) are data at module level, which mutmut leaves alone; a widened table is what the
exhaustive tests catch, entry by entry, against the independently written reference.

The run works on a copy in a temporary folder (mutmut writes a `mutants/` tree beside the code), with
only the guard mutated and only the fast exhaustive test file run against each mutant. Mutant names
carry a number per function, so after an edit of egress_guard.py the list below may need renaming:
`mutmut show NAME` in the printed folder shows each survivor's diff.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MUTMUT = Path(sys.executable).parent / "mutmut"
PREFIX = "openseg.han_reader.egress_guard."

EQUIVALENT = {
    "x__check_at__mutmut_13": "frame[2:5] for frame[2:4]: the frame is exactly 4 bytes at that point",
    "x__check_at__mutmut_15": "'ASCII' for 'ascii': the same codec",
}

# mutmut hands each mutant's covering tests to pytest in no particular order, with -x: running the quick
# targeted tests first and the exhaustive sweeps last lets most mutants die within milliseconds.
CONFTEST = """
def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.name.startswith(("test_every_", "test_guard_and_reference")))
"""

CONFIG = """[mutmut]
source_paths = openseg
only_mutate = openseg/han_reader/egress_guard.py
pytest_add_cli_args = -p no:cacheprovider
pytest_add_cli_args_test_selection =
    tests/han_reader/test_egress_guard.py
    -k
    not random_frames
"""


@pytest.mark.timeout(1200)
def test_every_mutant_of_the_guard_is_killed_or_named_equivalent(tmp_path):
    assert MUTMUT.exists(), "mutmut is not installed (pip install -e '.[test]')"
    work = tmp_path / "mutation"
    shutil.copytree(ROOT / "openseg", work / "openseg", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "tests" / "han_reader").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "han_reader" / "test_egress_guard.py", work / "tests" / "han_reader")
    (work / "tests" / "conftest.py").write_text(CONFTEST)
    (work / "setup.cfg").write_text(CONFIG)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run([str(MUTMUT), "run", "--max-children", "2"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=1100)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    status = dict(re.findall(r"^\s*" + re.escape(PREFIX) + r"(\S+): (.+)$", results.stdout, re.M))
    assert len(status) > 150, results.stdout[-2000:]           # the run did mutate the guard
    survivors = {name for name, s in status.items() if s != "killed"}
    unexplained = survivors - EQUIVALENT.keys()
    assert not unexplained, f"surviving mutants (see `mutmut show NAME` in {work}): " + ", ".join(
        f"{n}: {status[n]}" for n in sorted(unexplained))
    assert not EQUIVALENT.keys() - survivors, "named equivalent but killed (or renamed): " \
        + ", ".join(sorted(EQUIVALENT.keys() - survivors))
