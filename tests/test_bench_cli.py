"""`fastalign bench`: a tiny run writes valid JSON and a PNG; the peers compute what
fastalign computes; the power-law generator and the Planetoid graph reader."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import fastalign
from fastalign.bench import graphs as G
from fastalign.bench import peers
from fastalign.bench.command import add_bench_parser, main
from fastalign.bench.timing import peak_memory, prepare_cpu_memory_measurement, time_call, time_interleaved

pytest.importorskip("torch_geometric", reason="the bench peers need torch_geometric")


def _tiny_run(tmp_path, extra=()):
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--suite", "all", "--device", "cpu", "--sizes", "tiny", "--no-compile",
            "--budget", "0.02", "--threads", "1", "--quiet", "--json", str(json_path), "--plot", str(png_path), *extra]
    assert main(argv) == 0
    return json.loads(json_path.read_text()), png_path


def test_bench_cli_tiny_writes_json_and_png(tmp_path, capsys):
    threads = torch.get_num_threads()
    run, png = _tiny_run(tmp_path)
    assert torch.get_num_threads() == threads  # ... and restored after it
    out = capsys.readouterr().out
    assert "spmm: powerlaw-tiny" in out and "align: powerlaw-tiny" in out
    meta = run["meta"]
    assert meta["device"] == "cpu" and meta["sizes"] == "tiny"
    assert meta["command"].startswith("fastalign bench --suite all --device cpu --sizes tiny")
    assert meta["torch_threads"] == 1  # --threads 1 applied for the run ...
    assert meta["graphs"][0]["graph"] == "powerlaw-tiny"
    results = run["results"]
    suites = {r["suite"] for r in results}
    assert suites == {"spmm", "max", "gcn", "align", "similarity", "softmax", "attention", "linear", "sage", "graphconv",
                      "gin", "gat", "gat1"}
    assert {r["mode"] for r in results} == {"fwd", "fwd+bwd"}
    peers_run = {r["contender"] for r in results if r["kind"] == "peer" and r["status"] == "ok"}
    assert {"torch.sparse.mm (CSR)", "torch.sparse.mm amax (CSR)", "PyG gather+scatter max", "PyG GCNConv edge_index", "PyG GCNConv adj_t (torch.sparse)",
            "PyG-style loss", "PyG-style similarity", "PyG softmax", "PyG GAT propagation", "PyG SAGEConv", "PyG GraphConv", "PyG GINConv",
            "PyG GATConv"} <= peers_run
    ours = [r for r in results if r["kind"] == "fastalign"]
    assert {r["backend"] for r in ours} >= {"torch"}
    for r in results:
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["reps"] >= 3
            assert r["peak_mem_bytes"] is None or r["peak_mem_bytes"] >= 0
            # every contender computes the same thing as the first one of its suite
            if r.get("max_rel_err") is not None:
                assert r["max_rel_err"] < 1e-3, r
        else:
            assert r["status"] in ("skipped", "oom", "error") and r["reason"]
    # the op suites' contenders compute one function: per-edge outputs in the CSR's edge
    # order (similarity, softmax) or per node (attention)
    for r in (r for r in results if r["suite"] in ("similarity", "softmax", "attention")):
        assert r["status"] == "ok" and (r["max_rel_err"] is None or r["max_rel_err"] < 1e-5), r
    ok_torch = [r for r in ours if r["backend"] == "torch"]
    assert ok_torch and all(r["status"] == "ok" for r in ok_torch)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_bench_cli_subset_and_markdown(tmp_path, capsys):
    run, _ = _tiny_run(tmp_path, ["--suite", "spmm", "--mode", "fwd", "--backends", "torch",
                                  "--markdown", "--no-memory"])
    out = capsys.readouterr().out
    assert out.startswith("| suite / graph | contender |")
    first_row = out.splitlines()[2]
    assert first_row.startswith("| spmm: powerlaw-tiny") and first_row.count("|") == 9
    assert {r["suite"] for r in run["results"]} == {"spmm"}
    assert {r["mode"] for r in run["results"]} == {"fwd"}
    assert {r["backend"] for r in run["results"] if r["kind"] == "fastalign"} == {"torch"}
    assert all(r["peak_mem_bytes"] is None for r in run["results"])


def test_bench_cli_low_precision(tmp_path, capsys):
    """--dtype runs each graph in each dtype in one process: every contender's output in
    its dtype, the speed-ups against peers of the same dtype, and the float32 ratios."""
    from helpers import LOW_PRECISION_TOL

    run, png = _tiny_run(tmp_path, ["--suite", "spmm", "--dtype", "float32,bfloat16",
                                    "--no-memory"])
    out = capsys.readouterr().out
    assert "spmm: powerlaw-tiny (" in out and "spmm: powerlaw-tiny bfloat16 (" in out
    assert "lower precision: float32 time / this dtype's time" in out
    assert run["meta"]["dtypes"] == ["float32", "bfloat16"]
    assert "--dtype float32,bfloat16" in run["meta"]["command"]
    results = run["results"]
    assert {r["dtype"] for r in results} == {"float32", "bfloat16"}
    bf16 = [r for r in results if r["dtype"] == "bfloat16" and r["status"] == "ok"]
    # torch.sparse.mm has no CPU kernel for the half types (MKL): recorded, not fatal
    assert {r["contender"] for r in bf16 if r["kind"] == "peer"} >= {"PyG gather+scatter"}
    assert all(r["reason"] for r in results if r["status"] != "ok")
    assert any(r["kind"] == "fastalign" for r in bf16)
    for r in bf16:
        if r.get("max_rel_err") is not None:  # two bf16 roundings against each other
            assert r["max_rel_err"] < 2 * LOW_PRECISION_TOL[torch.bfloat16], r
    from fastalign.bench import report

    ratios = report.dtype_speedups(results)
    assert ratios and all(dt == "bfloat16" and ratio > 0 for *_, dt, ratio in ratios)
    speed = report.speedups(results)
    assert any(key[1] == "powerlaw-tiny bfloat16" for key in speed)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_cli_time_limit(tmp_path):
    run, _ = _tiny_run(tmp_path, ["--suite", "spmm", "--backends", "torch", "--max-minutes", "1e-9",
                                  "--no-memory"])
    assert "partial" not in run  # the final file replaces the per-graph one
    assert run["results"] and all(r["status"] == "skipped" and "time limit" in r["reason"]
                                  for r in run["results"])


def test_graphs_run_in_the_order_named():
    """--graphs sets the order too (the large graphs first, where time is short)."""
    from fastalign.bench.runner import run_benchmarks

    specs = [G._power_law_spec("pl-a", 60, 300), G._power_law_spec("pl-b", 80, 400)]
    run = run_benchmarks(["spmm"], "cpu", graphs=["pl-b", "pl-a", "pl-b"], backends=["torch"],
                         compile_peers=False, modes=["fwd"], measure_memory=False,
                         timing=dict(budget_s=0.0, warmup=0, min_reps=1), specs=specs)
    assert [g["graph"] for g in run["meta"]["graphs"]] == ["pl-b", "pl-a"]
    assert [r["graph"] for r in run["results"]][0] == "pl-b"


def test_real_widths_make_first_layers():
    """--features real: each data set's own input width, layers mapping it to 16 (GAT 8 x 8
    and 1 x 16), every contender on the same shapes; generated graphs keep 64."""
    from fastalign.bench.runner import run_benchmarks

    wide = G.GraphSpec("wide", 50, 300, "power-law", lambda: (G.power_law_edge_index(50, 300, seed=0), 50),
                       width=120)
    plain = G._power_law_spec("plain", 40, 200)
    run = run_benchmarks(["gcn", "gin", "gat", "gat1"], "cpu", backends=["torch", "cpu"], compile_peers=False,
                         features="real", modes=["fwd+bwd"], measure_memory=False,
                         timing=dict(budget_s=0.0, warmup=0, min_reps=1), specs=[wide, plain])
    widths = {(r["graph"], r["suite"]): r["features"] for r in run["results"]}
    assert set(widths.values()) == {120, 64} and widths[("wide", "gat1")] == 120 and widths[("plain", "gcn")] == 64
    for r in run["results"]:
        assert r["status"] == "ok", r
        assert r["max_rel_err"] is None or r["max_rel_err"] < 1e-4, r  # the same layer, every contender
    from fastalign.bench import suites as S

    w = S.Workload("wide", wide.load()[0], 50, torch.device("cpu"), features=120, out_features=16)
    import fastalign.nn as fnn

    assert S._layer("gat", "fastalign.nn", w).heads == 8 and S._layer("gat1", "fastalign.nn", w).heads == 1
    assert isinstance(S._layer("gat1", "fastalign.nn", w), fnn.GATConv)
    assert S._layer("gat", "fastalign.nn", w)(w.x, w.edge_index).shape == (50, 64)
    assert S._layer("gin", "fastalign.nn", w)(w.x, w.edge_index).shape == (50, 16)


def test_bench_cli_bad_arguments(capsys):
    assert main(["--sizes", "tiny", "--graphs", "nosuchgraph", "--quiet"]) == 2
    assert "unknown graph" in capsys.readouterr().err
    assert main(["--sizes", "tiny", "--backends", "nosuch", "--quiet"]) == 2
    with pytest.raises(SystemExit):
        main(["--suite", "nosuch"])
    with pytest.raises(SystemExit):  # argparse: a positive width or 'real'
        main(["--sizes", "tiny", "--features", "0", "--quiet"])
    assert "expected a positive width or 'real', got '0'" in capsys.readouterr().err
    assert main(["--sizes", "tiny", "--max-minutes", "0", "--quiet"]) == 2
    assert main(["--sizes", "tiny", "--dtype", "float8", "--quiet"]) == 2
    assert "unknown dtype 'float8'" in capsys.readouterr().err
    assert main(["--sizes", "tiny", "--root", "/nonexistent/fastalign-data", "--quiet"]) == 2  # measured nothing, said 0
    assert "--root /nonexistent/fastalign-data is not a folder" in capsys.readouterr().err
    # the output paths are checked before anything is measured
    assert main(["--sizes", "tiny", "--json", ".", "--quiet"]) == 2
    assert "--json . is a folder" in capsys.readouterr().err
    assert main(["--sizes", "tiny", "--plot", "speedups", "--quiet"]) == 2  # no extension: nothing written
    assert "--plot speedups: the file name must end in .png, .pdf, .svg" in capsys.readouterr().err
    assert main(["--sizes", "tiny", "--plot", "speedups.bmp", "--quiet"]) == 2


def test_add_bench_parser_registers_subcommand():
    parser = argparse.ArgumentParser(prog="fastalign")
    sub = parser.add_subparsers(dest="command")
    add_bench_parser(sub)
    args = parser.parse_args(["bench", "--suite", "gcn", "--device", "cpu", "--sizes", "small",
                              "--json", "x.json", "--plot", "x.png"])
    assert args.command == "bench" and args.suite == "gcn" and args.sizes == "small"
    assert args.json_path == "x.json" and args.plot_path == "x.png" and callable(args.func)


def test_fastalign_cli_has_bench():
    cli = pytest.importorskip("fastalign.cli", reason="fastalign.cli is not written yet")
    if not hasattr(cli, "main"):
        pytest.skip("fastalign.cli has no main()")
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0


def test_peers_compute_what_fastalign_computes():
    ei = G.power_law_edge_index(300, 2_000, seed=3)
    n = 300
    x = torch.randn(n, 8, dtype=torch.float64)
    graph = fastalign.Graph.from_edge_index(ei, num_nodes=n)
    want = fastalign.spmm(graph, x, backend="torch")
    torch.testing.assert_close(peers.torch_sparse_mm(peers.csr_adjacency(ei, n, torch.float64), x), want)
    torch.testing.assert_close(peers.pyg_scatter_spmm(ei, x, n), want)
    hs, hp = 0.5 * torch.randn(n, 8, dtype=torch.float64), 0.5 * torch.randn(n, 5, dtype=torch.float64)
    for kernel, sigma in (("l1", None), ("rbf", 2.0), ("cosine", None), ("linear", None)):
        got = peers.pyg_structure_loss(hs, hp, ei, n, kernel=kernel, tau=0.5, sigma=sigma)
        ref = fastalign.structure_kl(graph, hs, hp, kernel=kernel, tau=0.5, sigma=sigma, backend="torch")
        torch.testing.assert_close(got, ref)


def test_edge_peers_compute_what_fastalign_computes_in_its_edge_order():
    """The similarity and softmax suites' peers, fed the edges in the graph's CSR order
    (Workload.csr_edge_index), give fastalign's per-edge outputs edge for edge."""
    pytest.importorskip("torch_geometric")
    from fastalign.bench.suites import Workload

    n = 300
    ei = G.power_law_edge_index(n, 2_000, seed=3)
    w = Workload("pl", ei, n, torch.device("cpu"), features=8, dtype=torch.float64)
    csr = w.csr_edge_index
    assert csr.shape == ei.shape and sorted(map(tuple, csr.t().tolist())) == sorted(map(tuple, ei.t().tolist()))
    assert bool((csr[1].diff() >= 0).all())  # grouped by target, as the CSR is
    x = w.x
    for kernel, sigma in (("l1", 5.0), ("rbf", 2.0), ("linear", None)):
        want = fastalign.edge_similarity(w.graph, x, kernel=kernel, sigma=sigma, backend="torch")
        torch.testing.assert_close(peers.pyg_edge_similarity(x, csr, kernel=kernel, sigma=sigma), want)
    z = w.edge_randn("logits")
    torch.testing.assert_close(peers.pyg_edge_softmax(z, csr, n), fastalign.edge_softmax(w.graph, z, backend="torch"))


def test_attention_peer_is_gat_aggregate_without_added_loops():
    pytest.importorskip("torch_geometric")
    n, h, c = 200, 4, 3
    ei = G.power_law_edge_index(n, 1_500, seed=5)
    graph = fastalign.Graph.from_edge_index(ei, num_nodes=n)
    x = torch.randn(n, h, c, dtype=torch.float64)
    a_src, a_dst = torch.randn(n, h, dtype=torch.float64), torch.randn(n, h, dtype=torch.float64)
    want = fastalign.gat_aggregate(graph, x, a_src, a_dst, add_self_loops=False, backend="torch")
    torch.testing.assert_close(peers.pyg_gat_aggregate(x, a_src, a_dst, ei, n), want)


def test_power_law_generator_recipe():
    ei = G.power_law_edge_index(1_000, 20_000, seed=0)
    assert torch.equal(ei, G.power_law_edge_index(1_000, 20_000, seed=0))  # seeded
    assert not torch.equal(ei, G.power_law_edge_index(1_000, 20_000, seed=1))
    assert ei.dtype == torch.int64 and ei.size(0) == 2
    assert bool((ei[0] != ei[1]).all())  # no self loops
    assert 19_900 < ei.size(1) <= 20_000  # only loops were dropped (~1/N of them)
    assert int(ei.min()) >= 0 and int(ei.max()) < 1_000
    indeg = torch.bincount(ei[1], minlength=1_000)
    outdeg = torch.bincount(ei[0], minlength=1_000)
    # heavy-tailed in-degree with hubs, near-uniform out-degree
    assert indeg.max() > 10 * indeg.float().median()
    assert outdeg.max() < 3 * outdeg.float().mean()
    # hubs are spread over the id range (the permutation), not packed at low ids
    top = torch.topk(indeg, 10).indices
    assert top.float().std() > 100
    from helpers import power_law_edge_index as from_tests

    assert from_tests is G.power_law_edge_index
    with pytest.raises(ValueError):
        G.power_law_edge_index(0, 10)


def test_power_law_generator_is_one_stream_on_every_device():
    """Built on a device, the graph is the CPU's, edge for edge (the draws stay on the
    CPU; tests/test_triton_backend.py compares the values on CUDA)."""
    ei = G.power_law_edge_index(500, 4_000, seed=2, device="cpu")
    assert torch.equal(ei, G.power_law_edge_index(500, 4_000, seed=2))
    assert torch.equal(ei, G.power_law_edge_index(500, 4_000, seed=2, device=torch.device("cpu")))


def test_graph_specs():
    small = {s.name for s in G.graph_specs("small")}
    assert {"cora", "citeseer", "pubmed", "powerlaw-100k"} <= small
    large = {s.name: s for s in G.graph_specs("large")}
    assert large["reddit-like"].num_edges == 114_615_892 and large["reddit-like"].num_nodes == 232_965
    assert large["products-like"].num_nodes == 2_449_029
    assert large["arxiv-like"].num_edges == 2_332_486
    with pytest.raises(ValueError):
        G.graph_specs("huge")


@pytest.mark.parametrize("name,nodes,edges", [("cora", 2708, 10556), ("citeseer", 3327, 9104),
                                              ("pubmed", 19717, 88648)])
def test_planetoid_graphs(name, nodes, edges):
    root = G.default_data_root()
    if root is None or not G.planetoid_graph_file(name, root).is_file():
        pytest.skip(f"no {name} graph file (set FASTALIGN_DATA to the datasets folder)")
    ei, n = G.planetoid_edge_index(name, root)
    assert n == nodes and ei.size(1) == edges
    assert bool((ei[0] != ei[1]).all())
    # symmetric, as the citation graphs are stored
    key = set((ei[0] * n + ei[1]).tolist())
    assert key == set((ei[1] * n + ei[0]).tolist())


def test_planetoid_graph_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        G.planetoid_edge_index("cora", tmp_path)
    with pytest.raises(ValueError):
        G.planetoid_edge_index("reddit", tmp_path)


def test_timing_and_cpu_memory():
    t = time_call(lambda: torch.ones(10).sum(), "cpu", warmup=1, min_reps=4, budget_s=0.0)
    assert t.reps == 4 and 0 < t.min_s <= t.median_s
    if not prepare_cpu_memory_measurement():
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs)")
    mib = 2**20
    peak = peak_memory(lambda: torch.ones(64 * mib // 4), "cpu")  # a 64 MiB tensor
    assert 60 * mib < peak < 80 * mib
    small = peak_memory(lambda: torch.ones(1024), "cpu")
    assert small < 4 * mib


def test_timing_budget_counts_the_measured_calls():
    import time

    t = time_call(lambda: time.sleep(0.01), "cpu", warmup=0, min_reps=1, max_reps=100, budget_s=0.05)
    assert 1 < t.reps <= 5 and t.min_s >= 0.01  # each call >= 10 ms: the budget ends it by 5
    # cuda_events times CUDA calls; on the CPU the call is timed on the wall clock
    t = time_call(lambda: time.sleep(0.01), "cpu", warmup=0, min_reps=2, max_reps=2, cuda_events=True)
    assert t.reps == 2 and t.min_s >= 0.01


def test_contenders_are_timed_in_turns():
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    a, b = time_interleaved(fns, "cpu", rounds=3, warmup=2, min_reps=6, max_reps=6, budget_s=0.0)
    assert a.reps == b.reps == 6  # 2 timed calls per turn
    # turn 1: 2 warm-ups + 2 timed each; later turns: 1 warm-up + 2 timed each
    assert "".join(calls) == "aaaabbbb" + "aaabbb" * 2


def test_a_contender_failing_in_a_later_turn_leaves_the_others_timed():
    from fastalign.bench.runner import _measure_group

    state = {"calls": 0}

    def flaky():
        state["calls"] += 1
        if state["calls"] > 4:  # fine for its first turn, then fails
            raise RuntimeError("device lost")

    recs = [{"status": "ok"}, {"status": "ok"}]
    cfg = dict(warmup=1, min_reps=6, max_reps=6, budget_s=0.0, rounds=3)
    _measure_group([(recs[0], lambda: None), (recs[1], flaky)], torch.device("cpu"), cfg, False)
    assert recs[0]["status"] == "ok" and recs[0]["reps"] == 6
    assert recs[1]["status"] == "error" and "device lost" in recs[1]["reason"]


def test_bench_layers_suite_runs_every_drop_in_layer(tmp_path):
    pytest.importorskip("torch_geometric")
    json_path = tmp_path / "layers.json"
    argv = ["--suite", "layers", "--device", "cpu", "--sizes", "tiny", "--no-compile", "--mode", "fwd+bwd",
            "--budget", "0.02", "--threads", "1", "--quiet", "--no-memory", "--backends", "torch,cpu",
            "--json", str(json_path)]
    assert main(argv) == 0
    results = json.loads(json_path.read_text())["results"]
    assert {r["suite"] for r in results} == {"sage", "graphconv", "gin", "gat", "gat1"}
    for r in results:
        assert r["status"] == "ok", r
        if r["max_rel_err"] is not None:  # the same layer, parameters and inputs as PyG's
            assert r["max_rel_err"] < 1e-4, r


def test_bench_cli_runs_several_suites_and_the_cpu_preset(tmp_path):
    """``--suite`` takes a comma-separated list (each suite once, in order); the preset
    script bench/bench_cpu.py is that command with its options overridable."""
    import importlib.util
    from pathlib import Path

    json_path = tmp_path / "bench.json"
    spec = importlib.util.spec_from_file_location(
        "bench_cpu", Path(__file__).resolve().parents[1] / "bench" / "bench_cpu.py")
    preset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preset)
    assert "spmm,gcn,align" in preset.PRESET
    argv = preset.PRESET + ["--sizes", "tiny", "--graphs", "powerlaw-tiny", "--suite", "spmm,align,spmm",
                            "--no-compile", "--no-memory", "--budget", "0.02", "--threads", "1",
                            "--mode", "fwd", "--quiet", "--json", str(json_path)]
    assert main(argv) == 0
    run = json.loads(json_path.read_text())
    assert [s for s in dict.fromkeys(r["suite"] for r in run["results"])] == ["spmm", "align"]
    assert {r["backend"] for r in run["results"] if r["kind"] == "fastalign"} == {"cpu"}
    with pytest.raises(SystemExit):
        main(["--suite", "spmm,nope"])



def test_bench_appends_one_row_per_run_to_a_jsonl_file(tmp_path):
    """A benchmark family's records file (.jsonl) gets the whole run as one line per call,
    each with its date, commit and command; earlier lines stay as they were."""
    path = tmp_path / "ops_cpu.jsonl"
    argv = ["--suite", "spmm", "--device", "cpu", "--sizes", "tiny", "--graphs", "powerlaw-tiny", "--no-compile",
            "--no-memory", "--mode", "fwd", "--budget", "0.02", "--threads", "1", "--backends", "cpu", "--quiet",
            "--json", str(path)]
    assert main(argv) == 0
    first = path.read_text()
    assert main(argv) == 0
    text = path.read_text()
    assert text.startswith(first) and text.count("\n") == 2
    for line in text.splitlines():
        run = json.loads(line)
        assert {"date", "command"} <= set(run["meta"]) and run["results"]
        # a records row (bench/records.py): when, where and how, first
        assert list(run)[:4] == ["date", "commit", "machine", "command"]
        assert run["command"] == run["meta"]["command"] and "CPUs" in run["machine"]
        assert all(r["suite"] == "spmm" for r in run["results"])


def test_compile_dynamic_compiles_the_peers_with_dynamic_shapes(tmp_path):
    """``--compile-dynamic`` (the GPU check's sweep) compiles the peers once with dynamic
    shapes and says so in the run's metadata."""
    pytest.importorskip("torch_geometric")
    path = tmp_path / "run.json"
    argv = ["--suite", "gcn", "--device", "cpu", "--sizes", "tiny", "--graphs", "powerlaw-tiny", "--compile-dynamic",
            "--no-memory", "--mode", "fwd", "--budget", "0.02", "--threads", "1", "--backends", "cpu", "--quiet",
            "--json", str(path)]
    try:
        assert main(argv) == 0
    finally:
        from fastalign.bench import peers
        peers.COMPILE_OPTIONS.clear()
    run = json.loads(path.read_text())
    assert run["meta"]["compile_options"] == {"dynamic": True}
    compiled = [r for r in run["results"] if r.get("compiled")]
    assert compiled and all(r["status"] == "ok" for r in compiled), compiled
