"""Two test runs on one machine never share (and flush) one database of the shared Redis."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_DB

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def test_a_second_run_beside_this_one_claims_another_database():
    # given this run holding TEST_DB, when another run's conftest is imported beside it, then it claims another one
    other = subprocess.run(
        [sys.executable, "-c", "import tests.conftest as c; print(c.TEST_DB)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    claimed = int(other.stdout.strip())
    assert claimed != TEST_DB and 8 <= claimed <= 15, f"this run holds {TEST_DB}, the other claimed {claimed}"
