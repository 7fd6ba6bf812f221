"""pytest-benchmark suites over fastalign's benchmark harness.

    pytest bench/ --benchmark-only                       # small graphs, CPU
    FASTALIGN_BENCH_DEVICE=cuda pytest bench/ --benchmark-only
    FASTALIGN_BENCH_GRAPHS=cora,powerlaw-100k FASTALIGN_BENCH_SIZES=small pytest bench/ --benchmark-only
    FASTALIGN_BENCH_COMPILE=1 ...                         # add the torch.compile peers (slow to compile)

One benchmark per (suite, graph, contender, mode): the same callables as ``fastalign
bench`` (fastalign.bench.suites), timed by pytest-benchmark (on CUDA each call is
synchronised). Defaults keep it short: the ``cora`` graph when the data set is found,
else a generated 10k-node power-law graph; no compile peers. Contenders that cannot run
here (backend lacking an op, missing PyG) are skipped with the reason.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from fastalign.bench import suites as S  # noqa: E402
from fastalign.bench.graphs import graph_specs  # noqa: E402
from fastalign.bench.timing import synchronize  # noqa: E402

DEVICE = torch.device(os.environ.get("FASTALIGN_BENCH_DEVICE", "cpu"))
SIZES = os.environ.get("FASTALIGN_BENCH_SIZES", "small")
COMPILE = os.environ.get("FASTALIGN_BENCH_COMPILE", "0") == "1"


def _graphs():
    specs = {s.name: s for s in graph_specs(SIZES)}
    wanted = os.environ.get("FASTALIGN_BENCH_GRAPHS")
    if wanted:
        names = [g.strip() for g in wanted.split(",") if g.strip()]
        unknown = [g for g in names if g not in specs]
        if unknown:
            raise ValueError(f"FASTALIGN_BENCH_GRAPHS: unknown graph(s) {unknown}; choose from {sorted(specs)}")
        return [specs[n] for n in names]
    if "cora" in specs and specs["cora"].available()[0]:
        return [specs["cora"]]
    return [specs.get("powerlaw-10k") or next(iter(specs.values()))]


def _cases():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        return []
    cases = []
    for spec in _graphs():
        for suite in S.SUITES:
            for c in S.contenders(suite, DEVICE, compile_peers=COMPILE):
                for mode in S.MODES:
                    cases.append(pytest.param(spec, suite, c, mode, id=f"{suite}-{spec.name}-{c.name}-{mode}"))
    return cases


_WORKLOADS = {}


def _workload(spec):
    if spec.name not in _WORKLOADS:
        ok, why = spec.available()
        if not ok:
            pytest.skip(why)
        _WORKLOADS.clear()  # one graph in memory at a time
        edge_index, n = spec.load()
        _WORKLOADS[spec.name] = S.Workload(spec.name, edge_index, n, DEVICE)
    return _WORKLOADS[spec.name]


@pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("spec,suite,contender,mode", _cases())
def test_bench(benchmark, spec, suite, contender, mode):
    w = _workload(spec)
    try:
        fn = contender.build(w, mode)
    except S.Skip as exc:
        pytest.skip(str(exc))
    result = fn()  # warm-up: compiles, fills caches
    assert result is not None
    benchmark.group = f"{suite} {spec.name} {mode}"
    benchmark.extra_info.update(num_nodes=w.num_nodes, num_edges=w.num_edges, features=w.features,
                                device=DEVICE.type, contender=contender.name)

    def call():
        out = fn()
        synchronize(DEVICE)
        return out

    out = benchmark(call)
    assert out is not None
