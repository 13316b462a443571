"""Suite-wide settings.

Hypothesis explores new random examples on every run by default. Under CI (``CI`` set) it runs
a fixed, derandomized set instead, so that a rare example cannot turn CI red by chance; new
examples are explored on developers' machines, where a failure is saved and replayed.
"""
from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
