"""gat_aggregate (fused graph attention) on every CPU backend against an independent loop
definition, its gradients, dropout mask and bad input; fastalign.nn.GATConv against PyG;
the Triton kernels under the interpreter (last section)."""

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from fastalign import attention_dropout
from helpers import (
    case_graphs, CUDA_CASES, graph_params, index_params, loop_gat, LOW_PRECISION_TOL, random_edge_index, rel_err,
    TRITON_GPU_CASES, TRITON_INTERPRETER,
)

BACKENDS = [b for b in ("torch", "cpu") if backends.is_available(b)]
HEADS, CHANNELS = 3, 4


def inputs(graph, dtype=torch.float64, seed=0, with_dst=True, heads=HEADS, channels=CHANNELS):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(graph.num_src, heads, channels, generator=gen, dtype=torch.float64)
    a_s = torch.randn(graph.num_src, heads, generator=gen, dtype=torch.float64)
    a_d = torch.randn(graph.num_dst, heads, generator=gen, dtype=torch.float64) if with_dst else None
    cast = lambda t: None if t is None else t.to(dtype).requires_grad_()  # noqa: E731
    return cast(x), cast(a_s), cast(a_d)


def big_hub(index_dtype=torch.int64):
    """A row of 9,000 in-edges (cut into pieces by the CPU kernels), a self loop on it."""
    n = 3000
    src = torch.randint(0, n, (9000,), generator=torch.Generator().manual_seed(3))
    ei = torch.stack([src, torch.zeros_like(src)])
    ei = torch.cat([ei, random_edge_index(n, n, 2000, seed=4)], 1)
    return Graph.from_edge_index(ei.to(index_dtype), num_nodes=n)


def graphs(index_dtype=torch.int64):
    return case_graphs(index_dtype) + [("big_hub", big_hub(index_dtype))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_matches_the_loop_definition(backend, index_dtype, add_self_loops):
    for name, g in graphs(index_dtype):
        for with_dst in (True, False):
            x, a_s, a_d = inputs(g, with_dst=with_dst)
            out = fastalign.gat_aggregate(g, x, a_s, a_d, 0.15, add_self_loops=add_self_loops, backend=backend)
            ref = loop_gat(g, x, a_s, a_d, 0.15, add_self_loops)
            torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12, msg=f"{name} dst={with_dst}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_matches_the_hash_mask_on_every_backend(backend):
    g = case_graphs()[0][1]
    x, a_s, a_d = inputs(g)
    p, seed = 0.4, 1234

    def keep(edge_id):
        k = attention_dropout.attention_keep(seed, torch.tensor([edge_id]), HEADS, p)[0]
        return k.double() * attention_dropout.dropout_scale(p)

    out = fastalign.gat_aggregate(g, x, a_s, a_d, dropout=p, seed=seed, backend=backend)
    torch.testing.assert_close(out, loop_gat(g, x, a_s, a_d, keep=keep), rtol=1e-10, atol=1e-12)
    again = fastalign.gat_aggregate(g, x, a_s, a_d, dropout=p, seed=seed, backend=backend)
    assert torch.equal(out, again)  # deterministic
    other = fastalign.gat_aggregate(g, x, a_s, a_d, dropout=p, seed=seed + 1, backend=backend)
    assert not torch.equal(out, other)
    everything = fastalign.gat_aggregate(g, x, a_s, a_d, dropout=1.0, seed=seed, backend=backend)
    assert torch.equal(everything, torch.zeros_like(everything))


def test_dropout_mask_keeps_the_expected_fraction():
    ids = torch.arange(200_000)
    for p in (0.1, 0.5, 0.9):
        kept = attention_dropout.attention_keep(7, ids, 2, p).double().mean().item()
        assert abs(kept - (1 - p)) < 5e-3, (p, kept)
    # the 64-bit index's high half matters: ids 2^32 apart draw different masks
    far = attention_dropout.attention_keep(7, ids[:1000] + 2**32, 1, 0.5)
    assert not torch.equal(far, attention_dropout.attention_keep(7, ids[:1000], 1, 0.5))


def test_mask_hash_is_murmur3_fmix32():
    # fmix32 of known inputs (MurmurHash3's finaliser), exact in the int64 emulation
    values = torch.tensor([0, 1, 0xDEADBEEF, 0xFFFFFFFF])
    expected = [0, 0x514E28B7, 0x0DE5C6A9, 0x81F16F39]
    assert attention_dropout._fmix32(values).tolist() == expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dropout,with_dst,loops", [(0.0, True, True), (0.35, True, False), (0.5, False, True)])
def test_gradcheck(backend, dropout, with_dst, loops):
    for name in ("square", "rectangular", "hub"):
        g = dict(case_graphs())[name]
        x, a_s, a_d = inputs(g, with_dst=with_dst, heads=2, channels=3)
        args = (x, a_s) + ((a_d,) if with_dst else ())

        def fn(*t):
            dst = t[2] if with_dst else None
            return fastalign.gat_aggregate(g, t[0], t[1], dst, 0.2, dropout, loops, seed=5, backend=backend)

        assert torch.autograd.gradcheck(fn, args), name


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_cpu_kernels_match_the_reference_gradients_on_hubs(index_dtype):
    if "cpu" not in BACKENDS:
        pytest.skip("the C++ extension is not built")
    g = big_hub(index_dtype)
    results = {}
    for backend in ("torch", "cpu"):
        x, a_s, a_d = inputs(g, seed=2)
        out = fastalign.gat_aggregate(g, x, a_s, a_d, dropout=0.2, seed=99, backend=backend)
        seed = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        results[backend] = (out,) + torch.autograd.grad(out, (x, a_s, a_d), seed)
    for a, b in zip(results["torch"], results["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_and_non_contiguous_inputs(backend):
    g = case_graphs()[0][1]
    x, a_s, a_d = inputs(g, dtype=torch.float32)
    ref = loop_gat(g, x, a_s, a_d)
    torch.testing.assert_close(fastalign.gat_aggregate(g, x, a_s, a_d, backend=backend).double(), ref,
                               rtol=1e-5, atol=1e-6)
    # channels-major storage and a strided view of the attention terms
    xt = x.detach().permute(2, 0, 1).contiguous().permute(1, 2, 0)
    wide = torch.zeros(g.num_src, 2 * HEADS, dtype=torch.float32)
    wide[:, ::2] = a_s.detach()
    assert not xt.is_contiguous() and not wide[:, ::2].is_contiguous()
    out = fastalign.gat_aggregate(g, xt, wide[:, ::2], a_d.detach(), backend=backend)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


LOW = LOW_PRECISION_TOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(LOW))
def test_low_precision_within_tolerance(backend, dtype):
    g = big_hub()
    x, a_s, a_d = inputs(g, dtype=dtype)
    out = fastalign.gat_aggregate(g, x, a_s, a_d, backend=backend)
    assert out.dtype == dtype
    ref = loop_gat(g, x, a_s, a_d) if g.num_dst < 100 else fastalign.gat_aggregate(
        g, x.double(), a_s.double(), a_d.double(), backend="torch")
    err = rel_err(out, ref)
    assert err <= LOW[dtype], err


def test_bad_inputs_are_clear_errors():
    g = case_graphs()[0][1]
    x, a_s, a_d = inputs(g)
    with pytest.raises(ValueError, match="3-D"):
        fastalign.gat_aggregate(g, x.detach().flatten(1), a_s, a_d)
    with pytest.raises(ValueError, match="rows"):
        fastalign.gat_aggregate(g, x, a_s[:-1], a_d)
    with pytest.raises(ValueError, match="heads"):
        fastalign.gat_aggregate(g, x, a_s, a_d[:, :2])
    with pytest.raises(TypeError, match="share a dtype"):
        fastalign.gat_aggregate(g, x, a_s.float(), a_d)
    with pytest.raises(TypeError, match="floating"):
        fastalign.gat_aggregate(g, x.detach().long(), a_s, a_d)
    with pytest.raises(ValueError, match="dropout"):
        fastalign.gat_aggregate(g, x, a_s, a_d, dropout=1.5)
    with pytest.raises(ValueError, match="finite"):
        fastalign.gat_aggregate(g, x, a_s, a_d, negative_slope=float("nan"))
    with pytest.raises(TypeError, match="seed"):
        fastalign.gat_aggregate(g, x, a_s, a_d, dropout=0.5, seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        fastalign.gat_aggregate(g, x, a_s, a_d, dropout=0.5, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        fastalign.gat_aggregate(g, x, a_s, a_d, dropout=0.5, seed=torch.tensor([1.5]))
    # a one-element integer tensor is a seed too (the same mask as the int)
    torch.testing.assert_close(fastalign.gat_aggregate(g, x, a_s, a_d, dropout=0.5, seed=torch.tensor(7)),
                               fastalign.gat_aggregate(g, x, a_s, a_d, dropout=0.5, seed=7))
    with pytest.raises(TypeError, match="add_self_loops"):
        fastalign.gat_aggregate(g, x, a_s, a_d, add_self_loops="yes")
    with pytest.raises(ValueError, match="source nodes"):
        fastalign.gat_aggregate(g, x[:-1], a_s[:-1], a_d)


SEED = torch.zeros(1, dtype=torch.int64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_op_calls_with_bad_indices_raise(backend):
    g = case_graphs()[0][1]
    x, a_s, a_d = (t.detach() for t in inputs(g))
    ops = torch.ops.fastalign
    bad_col = g.col.clone()
    bad_col[3] = g.num_src + 5
    with pytest.raises(ValueError, match="out of range"):
        ops.gat_aggregate(g.rowptr, bad_col, x, a_s, a_d, 0.2, 0.0, SEED, True, None, None, None, backend)
    rowptr_t, col_t, perm_t = g.transpose()
    out, lse = ops.gat_aggregate(g.rowptr, g.col, x, a_s, a_d, 0.2, 0.0, SEED, True, None, None, None, backend)
    with pytest.raises(ValueError, match="lse"):
        ops.gat_aggregate_backward(g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, lse[:-1],
                                   out, 0.2, 0.0, SEED, True, backend)
    with pytest.raises(ValueError, match="perm_t"):
        ops.gat_aggregate_backward(g.rowptr, g.col, rowptr_t, col_t, perm_t[:-1], x, a_s, a_d, lse,
                                   out, 0.2, 0.0, SEED, True, backend)
    if backend == "cpu":  # the kernels' own checks, below the op's
        with pytest.raises(ValueError, match="outside"):
            torch.ops.fastalign_cpu.gat_aggregate_forward(g.rowptr, bad_col, x, a_s, a_d, 0.2, 0.0, 0, True)
        bad_t = col_t.clone()
        bad_t[0] = -1
        with pytest.raises(ValueError, match="outside"):
            torch.ops.fastalign_cpu.gat_aggregate_backward(
                g.rowptr, g.col, rowptr_t, bad_t, perm_t, x, a_s, a_d, lse, out, 0.2, 0.0, 0, True)


def test_no_grad_needs_no_transpose_and_empty_graph_works():
    g = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), num_nodes=4)
    x, a_s, a_d = inputs(g)
    for backend in BACKENDS:
        out = fastalign.gat_aggregate(g, x, a_s, a_d, backend=backend)  # loops only
        torch.testing.assert_close(out, x.detach())
        out.sum().backward()
        zero = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), num_nodes=(0, 0))
        x0, s0, d0 = inputs(zero)
        assert fastalign.gat_aggregate(zero, x0, s0, d0, backend=backend).shape == (0, HEADS, CHANNELS)


# ------------------------------------------------------------------ Triton, interpreted
# The Triton kernels against the reference on CPU tensors under the Triton interpreter:
# tests/test_triton_backend.py runs these in a process of its own with TRITON_INTERPRET=1
# (`TRITON_INTERPRET=1 pytest -m triton_interpreter tests/ops`); other runs do not collect them.
if TRITON_INTERPRETER:
    from triton_interpreter import close, graph, interpreted, ref, segments, SPLITS, tb

    @interpreted
    @pytest.mark.parametrize("name", ["square", "rectangular", "no_edges", "hub"])
    @pytest.mark.parametrize("loops,dropout,with_dst", [(True, 0.0, True), (False, 0.4, True), (True, 0.5, False)])
    @pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
    @pytest.mark.parametrize("split", SPLITS)
    def test_triton_gat_aggregate(name, loops, dropout, with_dst, index_dtype, split):
        g = graph(name, index_dtype)
        gen = torch.Generator().manual_seed(3)
        heads, channels = 3, 5  # neither a power of two: the padded tiles' masks
        x = torch.randn(g.num_src, heads, channels, generator=gen, dtype=torch.float64)
        a_s = torch.randn(g.num_src, heads, generator=gen, dtype=torch.float64)
        a_d = torch.randn(g.num_dst, heads, generator=gen, dtype=torch.float64) if with_dst else None
        args = (x, a_s, a_d, 0.15, dropout, 2**31 + 17, loops)
        with segments.force_split(split):  # 4: hub rows and rows of more than 4 edges in segments
            _check_gat(g, args, gen)


    def _check_gat(g, args, gen):
        x, a_s, a_d, _, dropout, _, loops = args
        out, lse = tb.gat_aggregate_forward(g.rowptr, g.col, *args)
        ref_out, ref_lse = ref.gat_aggregate_forward(g.rowptr, g.col, *args)
        close(out, ref_out)
        assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
        close(torch.nan_to_num(lse, neginf=0.0), torch.nan_to_num(ref_lse, neginf=0.0))
        rowptr_t, col_t, perm_t = g.transpose()
        grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.15, dropout,
                2**31 + 17, loops)
        close(tb.gat_aggregate_backward(*back), ref.gat_aggregate_backward(*back))


# ------------------------------------------------------------------ CUDA, on a device
# The CUDA extension's kernels against the reference on the same GPU (`pytest -m cuda
# tests/ops`); collected only where they can run (tests/ops/cuda_gpu.py: the dry run).
if CUDA_CASES:
    from cuda_gpu import (assert_close as cuda_close, CU, cuda_case, dtype_params as cuda_dtypes,
                          feats as cuda_feats, graph_of as cuda_graph, hub_rows_graph, REF as CREF)

    @cuda_case
    @graph_params
    @index_params
    @cuda_dtypes
    @pytest.mark.parametrize("heads,channels", ((1, 16), (3, 5), (8, 8)))
    @pytest.mark.parametrize("loops,dropout,with_dst", ((True, 0.0, True), (False, 0.3, True), (True, 0.5, False)))
    def test_cuda_gat_aggregate(name, index_dtype, dtype, heads, channels, loops, dropout, with_dst):
        g = cuda_graph(name, index_dtype)
        x = cuda_feats(g.num_src, heads * channels, dtype, seed=2).view(-1, heads, channels)
        a_s = cuda_feats(g.num_src, heads, dtype, seed=3)
        a_d = cuda_feats(g.num_dst, heads, dtype, seed=4) if with_dst else None
        args = (x, a_s, a_d, 0.2, dropout, 12345, loops)
        out, lse = CU.gat_aggregate_forward(g.rowptr, g.col, *args)
        ref_out, ref_lse = CREF.gat_aggregate_forward(g.rowptr, g.col, *args)
        cuda_close(out, ref_out)
        finite = torch.isfinite(ref_lse)
        assert torch.equal(torch.isfinite(lse), finite)
        cuda_close(lse[finite], ref_lse[finite], torch.float32)
        rowptr_t, col_t, perm_t = g.transpose()
        grad_out = cuda_feats(g.num_dst, heads * channels, dtype, seed=5).view(-1, heads, channels)
        back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.2, dropout,
                12345, loops)
        for got, expected in zip(CU.gat_aggregate_backward(*back), CREF.gat_aggregate_backward(*back)):
            cuda_close(got, expected)

    @cuda_case
    @pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
    def test_cuda_gat_aggregate_hub_rows(dtype):
        """Rows of 1,024 edges (one thread's longest), 1,025 and 50,000 (a block's), and a
        source of out-degree 20,000 (a long row of the transpose, for the source gradients),
        8 heads of 8 channels with self loops and dropout: against the reference, and the
        same bits on a second run."""
        g = hub_rows_graph(source_degree=20_000)
        heads, channels = 8, 8
        x = cuda_feats(g.num_src, heads * channels, dtype, seed=2).view(-1, heads, channels)
        a_s, a_d = cuda_feats(g.num_src, heads, dtype, seed=3), cuda_feats(g.num_dst, heads, dtype, seed=4)
        args = (x, a_s, a_d, 0.2, 0.1, 777, True)
        out, lse = CU.gat_aggregate_forward(g.rowptr, g.col, *args)
        ref_out, ref_lse = CREF.gat_aggregate_forward(g.rowptr, g.col, *args)
        cuda_close(out, ref_out)
        cuda_close(lse, ref_lse, torch.float32)
        rowptr_t, col_t, perm_t = g.transpose()
        assert int((rowptr_t[1:] - rowptr_t[:-1]).max()) >= 20_000
        grad_out = cuda_feats(g.num_dst, heads * channels, dtype, seed=5).view(-1, heads, channels)
        back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.2, 0.1, 777, True)
        grads = CU.gat_aggregate_backward(*back)
        for got, expected in zip(grads, CREF.gat_aggregate_backward(*back)):
            cuda_close(got, expected)
        again_out, again_lse = CU.gat_aggregate_forward(g.rowptr, g.col, *args)
        assert torch.equal(again_out, out) and torch.equal(again_lse, lse)
        for got, again in zip(grads, CU.gat_aggregate_backward(*back)):
            assert torch.equal(got, again)


# ------------------------------------------------------------------ Triton, on a device
# The Triton kernels compiled for the GPU against the reference on the same device
# (`pytest -m triton_gpu tests/ops`); collected only where they can run
# (tests/ops/triton_gpu.py: the dry run).
if TRITON_GPU_CASES:
    from triton_gpu import (dtypes as triton_dtypes, feats as triton_feats, hub, power_law, REF as TREF, rel_close,
                            TB, triton_gpu_case)

    @triton_gpu_case
    @pytest.mark.parametrize("dtype", triton_dtypes())
    @pytest.mark.parametrize("graph", ["power_law", "hub"])
    def test_triton_gpu_gat_aggregate(dtype, graph):
        g = power_law(torch.int32) if graph == "power_law" else hub(torch.int64)
        heads, channels = 8, 8
        x = triton_feats(g.num_src, heads * channels, dtype, 1).view(-1, heads, channels)
        a_s, a_d = triton_feats(g.num_src, heads, dtype, 2), triton_feats(g.num_dst, heads, dtype, 3)
        args = (x, a_s, a_d, 0.2, 0.25, 99, True)
        out, lse = TB.gat_aggregate_forward(g.rowptr, g.col, *args)
        ref_out, ref_lse = TREF.gat_aggregate_forward(g.rowptr, g.col, *args)
        rel_close(out, ref_out, dtype, "out")
        rel_close(lse, ref_lse, torch.float32, "lse")
        rowptr_t, col_t, perm_t = g.transpose()
        grad_out = triton_feats(g.num_dst, heads * channels, dtype, 4).view(-1, heads, channels)
        back = (g.rowptr, g.col, rowptr_t, col_t, perm_t, x, a_s, a_d, ref_lse, grad_out, 0.2, 0.25, 99, True)
        rel_close(TB.gat_aggregate_backward(*back), TREF.gat_aggregate_backward(*back), dtype, "grads")
