#!/usr/bin/env python
"""The CPU figures of record in one command: a preset of ``fastalign bench``.

fastalign's C++/OpenMP backend against torch.sparse.mm (MKL), PyG's GCNConv(cached=True)
eager and compiled, and the PyG-style structure loss eager and compiled: median time of
one call and peak extra memory, forward and forward+backward, on the 100k-node power-law
graph of docs/design.md (1M edges), F = 64, float32, 2 threads. Every contender runs in
this one process on the same inputs; the speed-ups are over the fastest peer.

    python bench/bench_cpu.py [--budget 3] [--json out.json] [any fastalign bench option]

Options given here override the preset's (argparse keeps the last value).
"""

from __future__ import annotations

import sys

from fastalign.bench.command import main

PRESET = ["--suite", "spmm,gcn,align", "--device", "cpu", "--graphs", "powerlaw-100k",
          "--backends", "cpu", "--threads", "2"]

if __name__ == "__main__":
    sys.exit(main(PRESET + sys.argv[1:]))
