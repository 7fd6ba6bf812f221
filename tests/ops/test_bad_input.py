"""Bad input to the public ops, on each backend here: one TypeError or ValueError that
names the argument (the malformed-CSR and edge-of-domain cases: tests/test_malformed_inputs.py
and tests/test_robustness.py); the backend choice by argument and by environment."""

import pytest
import torch

import fastalign
from helpers import dense_spmm, feats, get_case


def test_bad_inputs_are_refused_with_clear_errors(backend):
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 3)
    with pytest.raises(ValueError, match="rows"):
        fastalign.spmm(g, x[:-1], backend=backend)
    with pytest.raises(TypeError, match="floating"):
        fastalign.spmm(g, x.long(), backend=backend)
    with pytest.raises(ValueError, match="2-D"):
        fastalign.spmm(g, x[:, 0], backend=backend)
    with pytest.raises(ValueError, match="reduce"):
        fastalign.spmm(g, x, "min", backend=backend)
    with pytest.raises(ValueError, match="edge_weight"):
        fastalign.spmm(g, x, edge_weight=torch.ones(3, dtype=torch.float64), backend=backend)
    with pytest.raises(TypeError, match="Tensor"):
        fastalign.spmm(g, x.numpy(), backend=backend)
    with pytest.raises(ValueError, match="unknown backend"):
        fastalign.spmm(g, x, backend="opencl")
    with pytest.raises(ValueError, match="kernel"):
        fastalign.edge_similarity(g, x, "gaussian", backend=backend)
    with pytest.raises(ValueError, match="sigma"):
        fastalign.edge_similarity(g, x, "l1", sigma=0.0, backend=backend)
    with pytest.raises(ValueError, match="tau"):
        fastalign.local_structure(g, x, tau=-1.0, backend=backend)
    with pytest.raises(ValueError, match="reduction"):
        fastalign.structure_kl(g, x, x, reduction="avg", backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        fastalign.structure_kl(g, x, x.float(), backend=backend)
    rect = get_case("rectangular", torch.int64)
    with pytest.raises(ValueError, match="pair"):
        fastalign.edge_similarity(rect, feats(rect.num_src, 3), backend=backend)
    with pytest.raises(ValueError, match="square"):
        fastalign.gcn_aggregate(rect, feats(rect.num_src, 3), backend=backend)


def test_backend_env_var_and_unavailable_backend(monkeypatch):
    g = get_case("square", torch.int64)
    x = feats(g.num_src, 3)
    monkeypatch.setenv(fastalign.backends.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="unknown backend"):
        fastalign.spmm(g, x)
    monkeypatch.setenv(fastalign.backends.ENV_VAR, "torch")
    torch.testing.assert_close(fastalign.spmm(g, x), dense_spmm(g, x, "sum"))
    monkeypatch.delenv(fastalign.backends.ENV_VAR)
    with pytest.raises(ValueError, match="cannot run|not available"):
        fastalign.spmm(g, x, backend="cuda")


def test_available_backends_lists_the_reference():
    from fastalign import backends

    names = backends.available_backends("cpu")
    assert names[0] == "torch" and set(names) <= set(backends.BACKENDS)
    assert backends.is_available("torch", "cpu") and not backends.is_available("cuda", "cpu")
