"""Layer-wise inference: a student's logits for every node of a graph that does not fit
on the device (or in one forward's memory), one layer at a time over blocks of rows.

A whole-graph forward keeps every layer's activations of all N nodes on one device.
Here each layer's input and output live in full where the graph lives (host memory,
say), and the device sees one block at a time: the block's rows of the CSR
(:meth:`fastalign.Graph.row_block`) and the rows of the layer's input that they read.
A layer is a node pass (its per-node projections, in chunks of rows) and a block pass
(the aggregation over each block, then the per-node tail: bias, activation, residual).
The device holds one chunk's inputs and outputs and the parameters, never a whole layer.

The result is the student's eval-mode forward (no dropout, no deep supervision) with the
aggregation split by rows: the same numbers up to the summation order of the GCN
normalisation, which is applied here as per-edge weights (tested in float64).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import ops
from ..graph import Graph, as_count
from ..ops.gcn_aggregate import gcn_norm_state
from ..sparse_features import SparseFeatures
from .models import GCNII_LAMBDA, Student


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _dense_rows(x, start: int, stop: int, device) -> Tensor:
    """Rows ``start .. stop-1`` of the features as a dense tensor on ``device``."""
    if not isinstance(x, SparseFeatures):
        return x[start:stop].to(device)
    block, feats = x.row_block(start, stop)
    dense = torch.zeros(stop - start, x.graph.num_src, dtype=x.values.dtype, device=device)
    dense[:, feats.to(device)] = block.to(device).to_dense()
    return dense


def _project_rows(x, start: int, stop: int, weight: Tensor, backend) -> Tensor:
    """``x[start:stop] @ weight.T`` on the weight's device (a sparse input stays sparse)."""
    device = weight.device
    if not isinstance(x, SparseFeatures):
        return x[start:stop].to(device) @ weight.t()
    block, feats = x.row_block(start, stop)
    return block.to(device).linear(weight[:, feats.to(device)], backend)


def _gcn_normalised(graph: Graph, dtype) -> tuple:
    """The graph with PyG's GCN normalisation of the whole graph folded into its edge
    weights (stored self loops 0), and the per-node loop weights: a block of its rows then
    aggregates ``sum_e w_e x_src + loop_i x_i`` with the whole graph's degrees."""
    own = graph.edge_weight
    dis, loop_weight = gcn_norm_state(graph, own, True, False, dtype)
    row, col = graph.row, graph.col.long()
    w = dis[row] * dis[col] * (own.to(dis.dtype) if own is not None else 1.0)
    return graph.with_edge_weight(w.masked_fill(row == col, 0).to(dtype)), (dis * dis * loop_weight).to(dtype)


def _norm_aggregate(block, sources, start, stop, feats, loop, device, backend):
    """The GCN-normalised aggregation ``A_hat feats`` for the block's rows, on ``device``
    (the block carries the normalised edge weights)."""
    agg = ops.spmm(block.to(device), feats[sources].to(device), "sum", backend=backend)
    return agg + loop[start:stop, None].to(device) * feats[start:stop].to(device)


@torch.no_grad()
def layerwise_inference(student: Student, graph: Graph, x, chunk_rows: int,
                        device=None, backend: Optional[str] = None) -> Tensor:
    """The logits of ``student`` (eval mode) for every node of ``graph``, computed layer
    by layer over blocks of ``chunk_rows`` destination rows on ``device`` (default: the
    student's parameters' device). ``graph`` and ``x`` (dense ``[N, F]`` or
    :class:`SparseFeatures`) stay where they are, and so does the result."""
    chunk_rows = as_count("chunk_rows", chunk_rows)
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    if not isinstance(graph, Graph) or not graph.is_square:
        raise ValueError("layer-wise inference takes a square fastalign.Graph over the nodes")
    first = next(student.parameters())
    device = torch.device(device) if device is not None else first.device
    if backend is None:
        layer = student.layers[0]
        backend = layer.conv.backend if student.model == "gat" else layer.backend
    home, n = graph.device, graph.num_dst
    dtype = first.dtype
    was_training = student.training
    student.eval()
    loop = None
    if student.model == "gcn":
        graph, loop = _gcn_normalised(graph, dtype)
    # (block, sources) on home: cut once, used by every layer
    blocks = [graph.row_block(start, stop) for start, stop in _chunks(n, chunk_rows)]

    h, h0 = x, None
    last = student.num_layers - 1
    try:
        for i, layer in enumerate(student.layers):
            out = None
            tail_in = _node_pass(student, layer, i, h, n, chunk_rows, device, backend)
            for (block, sources), (start, stop) in zip(blocks, _chunks(n, chunk_rows)):
                y = _block_pass(student, layer, i, h, h0, tail_in, block, sources, start, stop,
                                loop, device, backend)
                if i < last:
                    y = torch.relu(y)
                    if i > 0 and student.residual == "plain":
                        y = y + h[start:stop].to(device)
                    elif i > 0 and student.residual == "initial":
                        a = student.residual_alpha
                        y = (1.0 - a) * y + a * h0[start:stop].to(device)
                if out is None:
                    out = torch.empty((n,) + tuple(y.shape[1:]), dtype=y.dtype, device=home)
                out[start:stop] = y.to(home)
            if out is None:  # an empty graph
                out = torch.empty(0, student.widths[i], dtype=dtype, device=home)
            h = out
            if i == 0:
                h0 = h
    finally:
        student.train(was_training)
    return h


def _node_pass(student, layer, i, h, n, chunk_rows, device, backend):
    """The layer's per-node work over all nodes, in chunks, kept where the graph is:
    GCN: ``h W^T``; SAGE (projecting first): ``(h W_l^T, h W_r^T)``; GAT: the heads'
    projections and attention terms. None when the layer aggregates its input as is."""
    if student.model == "gcn":
        if student.residual == "gcnii" and 0 < i < student.num_layers - 1:
            return None
        parts = [_project_rows(h, a, b, layer.lin.weight, backend) for a, b in _chunks(n, chunk_rows)]
        return (_cat_home(parts, h),)
    if student.model == "sage":
        if not (isinstance(h, SparseFeatures) or layer.lin_l.out_features < layer.lin_l.in_features):
            return None
        left = [_project_rows(h, a, b, layer.lin_l.weight, backend) for a, b in _chunks(n, chunk_rows)]
        right = [_project_rows(h, a, b, layer.lin_r.weight, backend) for a, b in _chunks(n, chunk_rows)]
        return _cat_home(left, h), _cat_home(right, h)
    conv = layer.conv
    per = [conv._project(_dense_rows(h, a, b, device))[1:] for a, b in _chunks(n, chunk_rows)]
    if not per:
        return None, None, None, None
    return tuple(None if parts[0] is None else _cat_home(list(parts), h) for parts in zip(*per))


def _cat_home(parts, like) -> Tensor:
    home = like.values.device if isinstance(like, SparseFeatures) else like.device
    return torch.cat([p.to(home) for p in parts]) if parts else torch.empty(0, device=home)


def _block_pass(student, layer, i, h, h0, tail_in, block, sources, start, stop, loop, device, backend):
    """The layer's output for rows ``start .. stop-1`` on ``device``, before the tail."""
    if student.model == "gcn":
        if tail_in is None:  # GCNII: s = (1 - a) A_hat h + a h0, then (1 - b) s + b s W + bias
            a, beta = student.residual_alpha, math.log(GCNII_LAMBDA / i + 1.0)
            agg = _norm_aggregate(block, sources, start, stop, h, loop, device, backend)
            s = (1.0 - a) * agg + a * h0[start:stop].to(device)
            return (1.0 - beta) * s + beta * layer.lin(s) + layer.bias
        (proj,) = tail_in
        return _norm_aggregate(block, sources, start, stop, proj, loop, device, backend) + layer.bias
    if student.model == "sage":
        g = block.to(device)
        if tail_in is not None:
            left, right = tail_in
            agg = ops.spmm(g, left[sources].to(device), "mean", backend=backend)
            return agg + layer.lin_l.bias + right[start:stop].to(device)
        agg = ops.spmm(g, h[sources].to(device), "mean", backend=backend)
        return layer.lin_l(agg) + layer.lin_r(h[start:stop].to(device))
    conv = layer.conv
    xs, a_src, a_dst, res = tail_in
    out = ops.gat_aggregate(block.to(device), xs[sources].to(device), a_src[sources].to(device),
                            a_dst[start:stop].to(device), conv.negative_slope, 0.0, conv.add_self_loops,
                            backend=backend)
    out = out.reshape(-1, conv.heads * conv.out_channels) if conv.concat else out.mean(dim=1)
    if res is not None:
        out = out + res[start:stop].to(device)
    return out + conv.bias if conv.bias is not None else out


def student_size(student: Student) -> dict:
    """Parameters and bytes of the student as deployed (without deep-supervision heads)."""
    deployed = [p for name, p in student.named_parameters() if not name.startswith("aux.")]
    return {"parameters": sum(p.numel() for p in deployed),
            "bytes": sum(p.numel() * p.element_size() for p in deployed)}


def inference_cost(student: Student, batch, reps: int = 10) -> dict:
    """What a deployer weighs, for one graph (a :class:`~fastalign.datasets.GraphBatch`
    on the CPU): the student's parameters and bytes without its deep-supervision heads,
    and the median time of an eval-mode forward on one thread and on all of torch's
    threads, in milliseconds."""
    import statistics
    import time

    facts = {**student_size(student), "nodes": batch.num_nodes}
    threads = torch.get_num_threads()
    was_training = student.training
    student.eval()
    timings = {}
    try:
        with torch.no_grad():
            for count in sorted({1, threads}):
                torch.set_num_threads(count)
                student(batch.graph, batch.edge_index, batch.x_input)  # warm-up
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    student(batch.graph, batch.edge_index, batch.x_input)
                    times.append(time.perf_counter() - t0)
                timings[f"{count}_thread{'s' if count > 1 else ''}"] = statistics.median(times) * 1e3
    finally:
        torch.set_num_threads(threads)
        student.train(was_training)
    facts["inference_ms"] = timings
    return facts
