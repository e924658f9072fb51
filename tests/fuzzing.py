"""Shared settings of the property-based (hypothesis) tests: bounded, reproducible, no example database.

The fuzz tests must stay fast (all of them under a minute on a 2-core machine) and give the
same examples on every run (CI that fails once fails again); each test states its own
max_examples within FUZZ.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ = settings(
    deadline=None,  # file I/O on a shared machine: timing is not the property
    derandomize=True,  # the same examples on every run
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    max_examples=40,
)
