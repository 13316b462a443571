"""The bregkd Python client and command line. Speaks HTTP only: no torch needed.

>>> from client.api import BregkdClient
>>> with BregkdClient("http://127.0.0.1:8000", "bkd_...") as api:
...     teacher = api.upload_teacher("teacher.pt2", wait=True)
"""
from __future__ import annotations
