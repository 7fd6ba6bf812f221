import os
import sys

# Tests import their helpers as `tests.graphs` / `graphs`.
sys.path.insert(0, os.path.dirname(__file__))
