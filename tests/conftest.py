import os
import sys
import time

# Tests import their helpers as `helpers` (tests/helpers.py).
sys.path.insert(0, os.path.dirname(__file__))


import pytest


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: only the jobs of tests that run
def pytest_collection_modifyitems(session, config, items):
    """Start the long background jobs the collected tests need (tests/background_jobs.py:
    one at a time, on the second core: the nvcc compiles, the Triton interpreter suite),
    and run the tests that wait for them, and the other long builds (a module's
    RUN_LAST), after everything else."""
    import background_jobs

    keys = []
    for item in items:
        for key in background_jobs.jobs_of(item):
            if key not in keys:
                keys.append(key)
    if keys and not config.option.collectonly:
        background_jobs.start(keys)
        # the jobs hold one core: the tests here leave it to them (an OpenMP region that
        # waits for a core a compiler holds stalls, as docs/benchmarks.md's busy-machine
        # figures show); a test that needs a thread count sets it
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    # stable: RUN_LAST = True (1) modules after the rest, then RUN_LAST = 2 ones (after
    # every background job has been waited for: wall-clock rehearsals on a quiet machine)
    items.sort(key=lambda item: int(getattr(item.module, "RUN_LAST", 0)))


_SESSION_START = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    """When each background job ran (the second core's share of the run's time)."""
    import background_jobs

    jobs = background_jobs.timeline(_SESSION_START)
    if jobs:
        terminalreporter.write_sep("-", "background jobs (seconds after the start)")
        for key, start, end in jobs:
            terminalreporter.write_line(f"{key}: {start:.0f} -> {end:.0f} ({end - start:.0f} s)")


def pytest_unconfigure(config):
    import background_jobs

    background_jobs.shutdown()
