"""Layer-wise inference over row blocks (Graph.row_block, Student.inference) against the
student's whole-graph forward, and the trainer's --eval-chunk-rows / --data-device."""

import pytest
import torch

from fastalign import Graph, backends
from fastalign.datasets import synthetic_csbm
from fastalign.distill import Student, TrainConfig, run_experiment
from fastalign.distill.inference import layerwise_inference
from fastalign.sparse_features import SparseFeatures

from helpers import random_edge_index

BACKENDS = [b for b in ("torch", "cpu") if backends.is_available(b)]


def _graph(n=60, e=400, index_dtype=torch.int64, seed=0):
    # self loops, duplicates, a hub (node 0 receives from everyone) and isolated nodes
    ei = random_edge_index(n - 5, n - 5, e, seed=seed)
    hub = torch.stack([torch.arange(n - 5), torch.zeros(n - 5, dtype=torch.long)])
    ei = torch.cat([ei, hub], 1).to(index_dtype)
    return Graph.from_edge_index(ei, num_nodes=n)


# ----------------------------------------------------------------------------- row_block
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_row_block_is_the_rows_of_the_dense_adjacency(index_dtype):
    g = _graph(index_dtype=index_dtype)
    w = torch.rand(g.num_edges, dtype=torch.float64)
    g = g.with_edge_weight(w)
    dense = torch.zeros(g.num_dst, g.num_src, dtype=torch.float64)
    dense.index_put_((g.row, g.col.long()), w, accumulate=True)
    for start, stop in [(0, 7), (7, 33), (33, 60), (12, 12), (0, 60)]:
        block, sources = g.row_block(start, stop)
        assert block.num_dst == stop - start and block.num_src == sources.numel()
        assert block.index_dtype == index_dtype and sources.dtype == torch.int64
        # own rows first, then the other sources each once
        assert torch.equal(sources[: stop - start], torch.arange(start, stop))
        assert sources.unique().numel() == sources.numel()
        got = torch.zeros(block.num_dst, block.num_src, dtype=torch.float64)
        got.index_put_((block.row, block.col.long()), block.edge_weight, accumulate=True)
        want = torch.zeros_like(got)
        want[:, :] = dense[start:stop][:, sources]
        assert torch.equal(got, want)
        # every edge of those rows, nothing else
        assert block.num_edges == int(g.rowptr[stop] - g.rowptr[start])


def test_row_block_of_a_rectangular_graph_and_bad_ranges():
    ei = random_edge_index(9, 20, 60, seed=3)
    g = Graph.from_edge_index(ei, num_nodes=(9, 20))
    block, sources = g.row_block(4, 11)
    assert torch.equal(sources, sources.sort().values)  # no own rows: the sorted sources read
    dense = torch.zeros(20, 9)
    dense.index_put_((g.row, g.col.long()), torch.ones(g.num_edges), accumulate=True)
    got = torch.zeros(block.num_dst, block.num_src)
    got.index_put_((block.row, block.col.long()), torch.ones(block.num_edges), accumulate=True)
    assert torch.equal(got, dense[4:11][:, sources])
    for bad in [(5, 4), (0, 21)]:
        with pytest.raises(ValueError, match="range"):
            g.row_block(*bad)
    with pytest.raises(TypeError, match="start"):
        g.row_block(1.5, 3)


# ----------------------------------------------------------------------------- inference
CASES = [("gcn", "none"), ("gcn", "plain"), ("gcn", "initial"), ("gcn", "gcnii"),
         ("sage", "none"), ("sage", "initial"), ("gat", "none"), ("gat", "plain")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model,residual", CASES)
@pytest.mark.parametrize("sparse", [False, True])
def test_inference_equals_the_whole_graph_forward(backend, model, residual, sparse):
    torch.manual_seed(0)
    g = _graph()
    x = torch.rand(g.num_dst, 12, dtype=torch.float64)
    x = x * (torch.rand_like(x) < 0.2)  # bag-of-words-like: the sparse input path
    s = Student(model, 12, 8, 3, num_layers=4, deep_supervision=True, heads=2, backend=backend,
                residual=residual, residual_alpha=0.3).double()
    s.train()
    inp = SparseFeatures.from_dense(x) if sparse else x
    s.eval()
    with torch.no_grad():
        want = s(g, g.edge_index, inp).logits
    s.train()
    for chunk in (1, 7, 60, 1000):
        got = layerwise_inference(s, g, inp, chunk)
        assert got.shape == want.shape and got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert s.training  # the mode is given back


@pytest.mark.parametrize("model", ["gcn", "sage", "gat"])
def test_inference_float32_int32_and_an_empty_graph(model):
    torch.manual_seed(1)
    g = _graph(index_dtype=torch.int32)
    x = torch.randn(g.num_dst, 10)
    s = Student(model, 10, 8, 4, num_layers=3, heads=2, backend=BACKENDS[-1]).eval()
    with torch.no_grad():
        want = s(g, g.edge_index, x).logits
    torch.testing.assert_close(layerwise_inference(s, g, x, 16), want, rtol=1e-5, atol=1e-5)
    empty = Graph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), num_nodes=0)
    out = layerwise_inference(s, empty, torch.zeros(0, 10), 4)
    assert out.shape == (0, 4)


def test_inference_bad_input():
    g = _graph()
    s = Student("gcn", 4, 8, 3, backend="torch")
    x = torch.randn(g.num_dst, 4)
    with pytest.raises(ValueError, match="chunk_rows"):
        layerwise_inference(s, g, x, 0)
    with pytest.raises(TypeError, match="chunk_rows"):
        layerwise_inference(s, g, x, 2.0)
    rect = Graph.from_edge_index(random_edge_index(5, 7, 10), num_nodes=(5, 7))
    with pytest.raises(ValueError, match="square"):
        layerwise_inference(s, rect, torch.randn(5, 4), 2)


# ----------------------------------------------------------------------------- trainer
def test_trainer_selects_models_layer_by_layer():
    """--eval-chunk-rows gives the run of a whole-graph evaluation (the same selection on
    the same logits up to rounding), with training on parts and the data set kept on
    --data-device."""
    data = synthetic_csbm(num_nodes=300, seed=0)
    base = dict(hidden=16, epochs=4, students=2, backend=BACKENDS[-1], mode="simultaneous", num_parts=2)
    whole = run_experiment(TrainConfig(**base), data, [0])
    chunked = run_experiment(TrainConfig(**base, eval_chunk_rows=64, data_device="cpu"), data, [0])
    assert chunked["config"]["eval_chunk_rows"] == 64
    for a, b in zip(whole["runs"][0]["students"], chunked["runs"][0]["students"]):
        assert a["best_epoch"] == b["best_epoch"]
        assert a["val"] == pytest.approx(b["val"]) and a["test"] == pytest.approx(b["test"])
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="eval_chunk_rows"):
            TrainConfig(**base, eval_chunk_rows=bad)


def test_cli_eval_chunk_rows(tmp_path):
    import json

    from fastalign.cli import main

    path = tmp_path / "r.json"
    assert main(["train", "--nodes", "300", "--epochs", "2", "--eval-chunk-rows", "50", "--data-device", "cpu",
                 "--backend", BACKENDS[-1], "--json", str(path)]) == 0
    cfg = json.loads(path.read_text())["config"]
    assert cfg["eval_chunk_rows"] == 50 and cfg["data_device"] == "cpu"
    with pytest.raises(SystemExit):
        main(["train", "--eval-chunk-rows", "-1"])
    with pytest.raises(SystemExit):
        main(["train", "--data-device", "tpu"])


@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_inference_on_a_weighted_graph(model):
    """The graph's own edge weights enter the blocks as they enter the whole forward
    (GCN: the normalisation with weighted degrees; SAGE: the weighted mean)."""
    torch.manual_seed(2)
    g = _graph()
    g = g.with_edge_weight(torch.rand(g.num_edges, dtype=torch.float64) + 0.5)
    x = torch.randn(g.num_dst, 6, dtype=torch.float64)
    s = Student(model, 6, 8, 3, num_layers=3, backend=BACKENDS[-1]).double().eval()
    with torch.no_grad():
        want = s(g, g.edge_index, x).logits
    torch.testing.assert_close(layerwise_inference(s, g, x, 9), want, rtol=1e-10, atol=1e-12)
