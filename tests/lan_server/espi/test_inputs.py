"""The seam between the espi and state rooms is typed: espi.inputs' Protocols say what the ESPI builders
read, and mypy checks that the state room's objects (seams_typed.py) are what they say."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHECKED = ("openseg/lan_server/espi/inputs.py", "openseg/lan_server/state/history_source.py",
           "tests/lan_server/espi/seams_typed.py")


def test_the_state_rooms_objects_are_what_espi_inputs_says_it_reads(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary",
                           "--cache-dir", str(tmp_path / "mypy"), *CHECKED],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
