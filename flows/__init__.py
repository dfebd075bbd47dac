"""Prefect flows that wire the stages in `tasks/` together; imports go flows → tasks only.

Prefect reads some settings at import, so the ephemeral-API defaults are applied here,
before any flow module imports it. Values already in the environment win.
"""

import os
from pathlib import Path

from tasks.services import prefect_environment

for _name, _value in prefect_environment(Path(__file__).resolve().parents[1] / ".prefect").items():
    os.environ.setdefault(_name, _value)
