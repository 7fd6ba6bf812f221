"""The scaling sweep: its graphs (fastalign.bench.graphs), the machine's bandwidth, the
bytes an aggregation moves, the per-edge figures and slopes (fastalign.bench.scaling),
and `fastalign bench --sizes scaling`."""

from __future__ import annotations

import re

import pytest
import torch

from fastalign.bench import graphs, scaling
from fastalign.bench.command import main as bench_main


def test_chunked_generator_is_seeded_loop_free_and_streams(monkeypatch):
    monkeypatch.setattr(graphs, "CHUNK_EDGES", 1000)  # several chunks
    a = graphs.chunked_power_law_edge_index(500, 5_500, seed=3)
    b = graphs.chunked_power_law_edge_index(500, 5_500, seed=3)
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape[0] == 2
    assert not torch.equal(a, graphs.chunked_power_law_edge_index(500, 5_500, seed=4))
    assert (a[0] != a[1]).all() and a.min() >= 0 and a.max() < 500
    assert 5_000 < a.size(1) <= 5_500  # only the self loops (about 1 in N... plus hubs) dropped
    # heavy-tailed in-degree: the largest is far above the mean of 11
    assert torch.bincount(a[1], minlength=500).max() > 5 * a.size(1) / 500
    with pytest.raises(ValueError):
        graphs.chunked_power_law_edge_index(1, 10)


def test_chunked_block_model_keeps_its_edges_in_communities(monkeypatch):
    monkeypatch.setattr(graphs, "CHUNK_EDGES", 1000)  # several chunks
    n, e = 1_050, 10_500  # the last community has 50 nodes
    a = graphs.chunked_block_edge_index(n, e, seed=3)
    assert torch.equal(a, graphs.chunked_block_edge_index(n, e, seed=3)) and a.dtype == torch.int64
    assert (a[0] != a[1]).all() and a.min() >= 0 and a.max() < n and 10_000 < a.size(1) <= e
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))  # the order by community
    community = torch.empty(n, dtype=torch.long)
    community[perm] = torch.arange(n) // graphs.COMMUNITY
    inside = (community[a[0]] == community[a[1]]).double().mean()
    assert 0.88 < inside < 0.93  # 90% drawn inside, plus the 1% of the rest that land there
    assert (torch.bincount(community, minlength=11)[:11] == torch.tensor([100] * 10 + [50])).all()
    # numbered at random: consecutive ids share a community by chance (1 in 11), not 99 in 100
    assert (community[1:] == community[:-1]).double().mean() < 0.2
    with pytest.raises(ValueError):
        graphs.chunked_block_edge_index(10, 10, homophily=1.5)


def test_sweep_graphs_span_four_decades_at_two_degrees():
    specs = graphs.graph_specs("scaling")
    assert [s.name for s in specs[:5]] == [f"scale-d10-e{k}" for k in range(4, 9)]
    assert [s.name for s in specs if s.kind == "block-model"][:5] == [f"blocks-d10-e{k}" for k in range(4, 9)]
    assert {s.num_nodes * 50 for s in specs if "-d50-" in s.name} == set(graphs.EDGE_COUNTS)
    ei, n = specs[0].load()
    assert n == 1_000 and ei.size(1) > 9_000


def test_bytes_of_an_aggregation():
    moved = scaling.aggregation_bytes(num_dst=3, num_src=4, num_edges=5, width=2)
    csr = 4 * 8 + 5 * 8
    assert moved["compulsory"] == csr + 4 * 2 * 4 + 3 * 2 * 4
    assert moved["no_reuse"] == csr + 5 * 2 * 4 + 3 * 2 * 4
    weighted = scaling.aggregation_bytes(3, 4, 5, 2, weighted=True)
    assert weighted["compulsory"] - moved["compulsory"] == 5 * 4  # a value per edge


def _run(times, exponent=1.0):
    results = []
    for e, ms in times:
        results.append(dict(suite="spmm", graph=f"scale-d10-{e}", mode="fwd", contender="c", num_nodes=e // 10,
                            num_edges=e, features=64, status="ok", median_ms=ms, peak_mem_bytes=100 * e))
    return {"meta": {"machine": {"stream": [{"threads": 1, "copy_GBps": 10.0, "triad_GBps": 20.0}]}},
            "results": results}


def test_per_edge_figures_and_slopes():
    linear = _run([(10**4, 1.0), (10**5, 10.0), (10**6, 100.0)])
    rows = scaling.summarize(linear)
    assert [round(r["ns_per_edge"]) for r in rows] == [100, 100, 100]
    assert all(r["bytes_per_edge"] == 100 for r in rows)
    r = rows[0]
    assert r["achieved_GBps"] == pytest.approx(r["compulsory_bytes"] / 1e-3 / 1e9)
    assert r["fraction_of_triad"] == pytest.approx(r["achieved_GBps"] / 20.0)
    assert r["over_no_reuse_bound"] == pytest.approx(1e-3 / (r["no_reuse_bytes"] / 20e9))
    (s,) = scaling.slopes(rows).values()
    assert s["slope"] == pytest.approx(1.0) and s["ratio"] == pytest.approx(1.0)
    quadratic = scaling.summarize(_run([(10**4, 1.0), (10**5, 100.0), (10**6, 10_000.0)]))
    (q,) = scaling.slopes(quadratic).values()
    assert q["slope"] == pytest.approx(2.0) and q["ratio"] == pytest.approx(100.0)
    text = scaling.render(linear)
    assert "triad 20.0 GB/s" in text and "slope 1.00" in text


def test_rows_merged_from_several_runs_keep_their_own_bandwidth():
    run = _run([(10**4, 1.0), (10**5, 10.0)])
    run["results"][1]["triad_GBps"] = 40.0  # measured in another run than the meta's 20
    first, second = scaling.summarize(run)
    assert first["fraction_of_triad"] == pytest.approx(first["achieved_GBps"] / 20.0)
    assert second["fraction_of_triad"] == pytest.approx(second["achieved_GBps"] / 40.0)
    assert second["over_no_reuse_bound"] == pytest.approx(10e-3 / (second["no_reuse_bytes"] / 40e9))
    run["results"][0]["suite"] = "max"  # the max is an aggregation too
    assert "fraction_of_triad" in scaling.summarize(run)[0]


def test_rows_on_huge_pages_are_their_own_curve():
    run = _run([(10**4, 1.0), (10**5, 10.0)])
    faster = _run([(10**4, 1.0), (10**5, 5.0)])["results"]
    for r in faster:
        r["huge_pages"] = True
    run["results"] += faster
    curves = scaling.slopes(scaling.summarize(run))
    assert {k[3:] for k in curves} == {("power law", 10, 64)}
    assert {k[2]: v["ratio"] for k, v in curves.items()} == pytest.approx(
        {"c": 1.0, "c" + scaling.HUGE_PAGES_LABEL: 0.5})


def test_huge_pages_follow_the_kernel_mode_and_torchs_switch(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    on = scaling.huge_pages()
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    off = scaling.huge_pages()
    assert on["torch_allocator"] and not off["torch_allocator"]
    assert on["mode"] == off["mode"] and on["mode"] in ("always", "madvise", "never", None)
    assert on["in_use"] == (on["mode"] in ("always", "madvise"))
    assert off["in_use"] == (off["mode"] == "always")
    machine = {"stream": [], "huge_pages": on}
    assert "torch's THP_MEM_ALLOC_ENABLE on" in "\n".join(scaling._machine_lines({"machine": machine}))


def test_stream_bandwidth_is_measured_and_threads_restored():
    before = torch.get_num_threads()
    bw = scaling.stream_bandwidth(threads=1, mib=8, repeats=2)
    assert bw["threads"] == 1 and bw["copy_GBps"] > 0 and bw["triad_GBps"] > 0
    assert torch.get_num_threads() == before
    caches = scaling.cache_sizes()
    assert all(isinstance(v, int) and v > 0 for v in caches.values())


def test_bench_scaling_command_reports_growth_and_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scaling, "stream_bandwidth",
                        lambda threads=None, **kw: {"threads": threads or 1, "copy_GBps": 1.0, "triad_GBps": 2.0})
    png = tmp_path / "scaling.png"
    code = bench_main(["--suite", "spmm", "--sizes", "scaling", "--graphs", "scale-d10-e4,scale-d50-e4",
                       "--mode", "fwd", "--no-compile", "--budget", "0.01", "--quiet", "--no-memory",
                       "--backends", "torch", "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "triad 2.0 GB/s" in out and "ns/edge" in out and "scale-d50-e4" in out
    assert png.stat().st_size > 1000
    table = out.split("x no-reuse", 1)[1]
    assert table.count("fastalign[torch]") >= 2  # a row per graph, with its figures


def test_markdown_has_a_row_per_curve_and_a_column_per_size():
    run = _run([(10**4, 1.0), (10**5, 10.0), (10**6, 200.0)])
    stop = dict(suite="spmm", graph="scale-d10-e7", mode="fwd", contender="c", features=64, status="skipped",
                reason="needs ~9 GiB, 1 GiB free")
    run["results"] += [stop, dict(stop, reason="needs ~9 GiB, 2 GiB free")]  # recorded by two runs: once
    text = scaling.render_markdown(run)
    header = next(line for line in text.splitlines() if line.startswith("| contender | graphs | F | 10^4"))
    assert header.split(" | ")[3:7] == ["10^4", "10^5", "10^6", "10^7"]
    (row,) = [line for line in text.splitlines() if line.startswith("| c | power law, d = 10 | 64 | 100 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:7] == ["100", "100", "200", "skipped"]
    assert cells[7].startswith("x2.00") and cells[8] == "100.0"  # growth per edge; bytes per edge
    curve = [line for line in text.splitlines() if line.startswith("| c | power law, d = 10 | 64 |")]
    assert len(curve) == 2 and re.search(r"\| [0-9.]+x, [0-9]+% \|", curve[1])  # against the memory
    assert text.count("needs ~9 GiB") == 1 and "2 GiB free" in text
