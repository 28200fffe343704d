"""A pytest plugin for benchmarks/time_tests.py: the CPU seconds each test used, itself and
every subprocess it waited for (Snakemake, DVC and the stage jobs they start), as a JUnit
property ``cpu_s``.

Wall seconds of a test under two workers say as much about the other worker as about the
test; its CPU seconds are its own, so they tell which test to make cheaper. Processes a test
does not wait for (DVC's queue workers, the Slurm daemons) are not counted.
"""

from __future__ import annotations

import resource

import pytest

_START = "_cpu_per_test_start"


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    setattr(item, _START, _cpu_seconds())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # The teardown report is made after the teardown ran: its properties carry the total of
    # setup, call and teardown (the earlier reports copied the list before this is added).
    if call.when == "teardown" and hasattr(item, _START):
        item.user_properties.append(("cpu_s", f"{_cpu_seconds() - getattr(item, _START):.2f}"))
    yield
