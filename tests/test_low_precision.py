"""Low-precision features (float16, bfloat16) on every backend of the test device against
the float64 reference: the accumulation and the GCN normalisation must not happen in
the features' dtype (a bfloat16 degree stops growing at 256, a float16 one at 2048)."""

import pytest
import torch

import fastalign
from fastalign import Graph, backends
from fastalign.nn import GCNConv
from helpers import LOW_PRECISION_TOL, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = backends.available_backends(DEVICE)
TOL = LOW_PRECISION_TOL


def hub_graph(hub_degree=5000, index_dtype=torch.int64):
    """Node 0 receives from every other node and sends to them (degree 5,000 both ways),
    plus a ring, so that every node has a few other neighbours too."""
    n = hub_degree + 1
    others = torch.arange(1, n)
    ring_src = others
    ring_dst = torch.roll(others, 1)
    src = torch.cat([others, torch.zeros_like(others), ring_src])
    dst = torch.cat([torch.zeros_like(others), others, ring_dst])
    ei = torch.stack([src, dst]).to(index_dtype)
    return Graph.from_edge_index(ei, num_nodes=n).to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_gcn_aggregate_with_hubs(backend, dtype, weighted, index_dtype):
    g = hub_graph(index_dtype=index_dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(g.num_src, 16, generator=gen, dtype=torch.float64).to(DEVICE)
    w = None
    if weighted:
        w = (torch.rand(g.num_edges, generator=gen, dtype=torch.float64) + 0.5).to(DEVICE)
    ref = fastalign.gcn_aggregate(g, x, edge_weight=w, backend="torch")
    w_low = w.float() if w is not None else None  # float32 weights beside a bf16 layer
    out = fastalign.gcn_aggregate(g, x.to(dtype), edge_weight=w_low, backend=backend)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]
    # the hub row itself (its degree alone would round away in the features' dtype)
    assert rel_err(out[:1], ref[:1]) <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(TOL))
def test_gcn_aggregate_gradient_with_hubs(backend, dtype):
    g = hub_graph()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(g.num_src, 8, generator=gen, dtype=torch.float64).to(DEVICE)
    gout = torch.randn(g.num_dst, 8, generator=gen, dtype=torch.float64).to(DEVICE)
    x64 = x.clone().requires_grad_()
    fastalign.gcn_aggregate(g, x64, backend="torch").backward(gout)
    xl = x.to(dtype).requires_grad_()
    fastalign.gcn_aggregate(g, xl, backend=backend).backward(gout.to(dtype))
    assert xl.grad.dtype == dtype
    assert rel_err(xl.grad, x64.grad) <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(TOL))
def test_gcn_conv_layer_with_hubs(backend, dtype):
    g = hub_graph()
    torch.manual_seed(0)
    conv64 = GCNConv(16, 16, backend="torch").double().to(DEVICE)
    conv = GCNConv(16, 16, backend=backend).to(DEVICE)
    conv.load_state_dict(conv64.state_dict())
    conv = conv.to(dtype)
    x = torch.randn(g.num_src, 16, dtype=torch.float64).to(DEVICE)
    ei = g.edge_index.long()
    ref = conv64(x, ei)
    out = conv(x.to(dtype), ei)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]


def test_normalisation_state_is_float32_for_low_precision():
    from fastalign.ops.gcn_aggregate import gcn_norm_state

    g = hub_graph()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        dis, loop = gcn_norm_state(g, None, True, False, dtype)
        assert dis.dtype == loop.dtype == torch.float32
        # degree of the hub: 5,000 in-edges and its loop
        torch.testing.assert_close(dis[0].double().cpu(), torch.tensor(5001.0, dtype=torch.float64) ** -0.5)
    dis, _ = gcn_norm_state(g, None, True, False, torch.float64)
    assert dis.dtype == torch.float64
