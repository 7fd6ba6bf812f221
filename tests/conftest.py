import os
import sys

# Tests import their helpers as `helpers` (tests/helpers.py).
sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(session, config, items):
    """Start the long background compiles the collected tests need (tests/background_jobs.py:
    one at a time, on the second core), and run the tests that wait for them, and the
    other long builds (a module's RUN_LAST), after everything else."""
    import background_jobs

    keys = []
    for item in items:
        for key in getattr(item.module, "BACKGROUND_JOBS", ()):
            if key not in keys:
                keys.append(key)
    if keys and not config.option.collectonly:
        background_jobs.start(keys)
    items.sort(key=lambda item: bool(getattr(item.module, "RUN_LAST", False)))  # stable


def pytest_unconfigure(config):
    import background_jobs

    background_jobs.shutdown()
