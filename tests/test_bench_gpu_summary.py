"""bench/bench_gpu.py's summary, on made-up records (the script itself runs on a GPU):
ratios against the peers, and the triton-vs-cuda table that the automatic backend
choice for CUDA tensors is set from."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py")
bench_gpu = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench_gpu)


def rec(op, impl, ms, graph="reddit", F=64, dtype="float32"):
    return dict(graph=graph, F=F, dtype=dtype, op=op, impl=impl, ms=ms)


def test_ratio_against_the_peer():
    text = bench_gpu.summarise([rec("spmm_fwd", "fastalign[triton]", 6.0),
                                rec("spmm_fwd", "torch.sparse.mm (cuSPARSE)", 8.0)], 4000.0)
    row = next(line for line in text.splitlines() if "fastalign[triton]" in line)
    assert "| 0.75x |" in row
    assert "triton vs cuda" not in text  # no cuda rows: no choice to make


def test_backend_choice_per_op():
    records = [
        rec("spmm_fwd", "fastalign[triton]", 6.0), rec("spmm_fwd", "fastalign[cuda]", 3.0),
        rec("spmm_fwd", "fastalign[triton]", 1.0, graph="arxiv"), rec("spmm_fwd", "fastalign[cuda]", 1.0, graph="arxiv"),
        rec("skl_fwd_bwd", "fastalign[triton]", 10.0), rec("skl_fwd_bwd", "fastalign[cuda]", 20.0),
        rec("skl_fwd_bwd", "fastalign[triton] atomic bwd", 1.0),  # not a backend of its own
        rec("gcn_fwd_bwd", "fastalign[triton]", 5.0), dict(rec("gcn_fwd_bwd", "fastalign[cuda]", None), status="OOM"),
    ]
    lines = bench_gpu.backend_choice(records)
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in lines if line.startswith("| ") and not line.startswith("| op") and "---" not in line}
    assert set(table) == {"spmm_fwd", "skl_fwd_bwd"}  # gcn: cuda did not run
    assert table["spmm_fwd"] == ["2", "0.71", "0.50 to 1.00", "cuda"]
    assert table["skl_fwd_bwd"] == ["1", "2.00", "2.00 to 2.00", "triton"]


def test_goal_table():
    records = [
        rec("spmm_fwd", "fastalign[triton]", 6.0), rec("spmm_fwd", "fastalign[cuda]", 7.0),
        rec("spmm_fwd", "torch.sparse.mm (cuSPARSE)", 10.0),
        rec("spmm_fwd", "fastalign[triton]", 6.0, dtype="bfloat16"),  # 0.6x of fp32 cuSPARSE: missed
        dict(rec("skl_fwd_bwd", "fastalign[triton]", 20.0), peak_bytes=50),
        dict(rec("skl_fwd_bwd", "PyG-style loss compiled", 100.0), peak_bytes=1000),
        dict(rec("skl_fwd_bwd", "fastalign[triton]", 20.0, graph="arxiv"), peak_bytes=200),
        dict(rec("skl_fwd_bwd", "PyG-style loss compiled", 100.0, graph="arxiv"), peak_bytes=1000),
        rec("gcn_fwd_bwd", "fastalign[triton]", 5.0),
        dict(rec("gcn_fwd_bwd", "PyG GCNConv compiled", None, graph="arxiv"), status="OOM"),
        rec("gcn_fwd_bwd", "fastalign[triton]", 5.0, graph="arxiv"),
    ]
    lines = bench_gpu.goals(records)

    def row(op, dtype, graph):
        return next(line for line in lines if line.startswith(f"| {op} | {dtype} | {graph} |"))

    assert row("spmm_fwd", "float32", "reddit").endswith("| met |") and "0.60x" in row("spmm_fwd", "float32", "reddit")
    assert row("spmm_fwd", "bfloat16", "reddit").endswith("| missed |")
    assert "not measured (ours)" in row("spmm_fwd", "float32", "products")
    assert row("skl_fwd_bwd", "float32", "reddit").endswith("| met |")  # 0.20x, 5% memory
    assert row("skl_fwd_bwd", "float32", "arxiv").endswith("| missed |")  # 20% memory > 10%
    assert "not measured (peer missing)" in row("gcn_fwd_bwd", "float32", "reddit")
    assert "not measured (peer OOM)" in row("gcn_fwd_bwd", "float32", "arxiv")
