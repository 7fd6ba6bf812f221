"""fastalign's user-facing benchmark harness (``fastalign bench``).

* :mod:`.graphs`  the benchmark graphs (docs/design.md's power-law generator, Planetoid graphs)
* :mod:`.timing`  timing (warm-up, median, CUDA synchronisation) and peak memory
* :mod:`.peers`   the peers: torch.sparse.mm, PyG's GCNConv, the PyG-style structure loss
* :mod:`.suites`  the suites ``spmm``, ``gcn``, ``align``: every contender on a graph
* :mod:`.report`  the table, JSON and plot
* :mod:`.command` ``add_bench_parser(subparsers)`` for the CLI, and ``main(argv)``

Importing this package is light (no PyG import); the modules import what they need.
"""
