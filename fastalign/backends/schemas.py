"""The backend functions, named and typed once.

``SCHEMAS`` maps every backend function to its torch schema: the reference's parameters
(``fastalign.backends.reference``), in order, with their types and results. Every backend
implements these signatures. The compiled extensions carry kernels only: before one is
loaded, :func:`define` declares the table's schemas in its namespace (``fastalign_cpu``
for ``fastalign._C``, ``fastalign_cuda`` for ``fastalign._C_cuda``), the kernels register
for them with ``TORCH_LIBRARY_IMPL`` (torch checks each kernel's C++ signature against
the schema here), and :func:`registered` reads back which functions have a kernel for a
dispatch key: that set is the backend's ``FUNCTIONS``. No list is kept by hand anywhere
else.

``OPTIONAL_SCHEMAS`` are fast paths a backend may add (the structure KL's student-only
backward, for a detached peer; a dense product for narrow outputs); an op uses them only
where the chosen backend has them:

    structure_kl_forward_with_grad_state  the forward plus the student's gradient state
        for a unit upstream gradient: (kl, lse_student, lse_peer, dst_grad
        [num_dst, F_student], src_coef [num_edges, 2])
    structure_kl_student_backward  the student's gradients from that state; with
        ``combined`` (s_dst and s_src one tensor) their sum in the first output
    linear  ``x w^T + bias`` (torch's ``F.linear``), the feature transform of the layers
        (``fastalign.ops.linear``)
"""

from __future__ import annotations

from functools import lru_cache

import torch

_SIMILARITY = "str kernel, float sigma, int degree, float coef"

SCHEMAS = {
    "spmm_forward": "(Tensor rowptr, Tensor col, Tensor? weight, Tensor x, str reduce) -> (Tensor, Tensor)",
    "spmm_max_backward": "(Tensor col, Tensor rowptr_t, Tensor col_t, Tensor perm_t, Tensor? weight, "
                         "Tensor x, Tensor arg, Tensor grad_out, bool need_weight_grad) -> (Tensor, Tensor)",
    "sddmm": "(Tensor rowptr, Tensor col, Tensor a, Tensor b) -> Tensor",
    "gcn_aggregate": "(Tensor rowptr, Tensor col, Tensor? weight, Tensor dis, Tensor? loop_weight, "
                     "Tensor x, Tensor? bias=None) -> Tensor",
    "edge_similarity": f"(Tensor rowptr, Tensor col, Tensor x_dst, Tensor x_src, {_SIMILARITY}) -> Tensor",
    "edge_similarity_backward": "(Tensor rowptr, Tensor col, Tensor rowptr_t, Tensor col_t, Tensor perm_t, "
                                f"Tensor x_dst, Tensor x_src, Tensor grad_s, {_SIMILARITY}) -> (Tensor, Tensor)",
    "edge_softmax": "(Tensor rowptr, Tensor logits) -> Tensor",
    "edge_softmax_backward": "(Tensor rowptr, Tensor p, Tensor grad_p) -> Tensor",
    "structure_kl_forward": "(Tensor rowptr, Tensor col, Tensor s_dst, Tensor s_src, Tensor p_dst, "
                            f"Tensor p_src, {_SIMILARITY}, float tau) -> (Tensor, Tensor, Tensor)",
    "structure_kl_backward": "(Tensor rowptr, Tensor col, Tensor rowptr_t, Tensor col_t, Tensor perm_t, "
                             "Tensor s_dst, Tensor s_src, Tensor p_dst, Tensor p_src, Tensor lse_s, "
                             f"Tensor lse_p, Tensor kl, Tensor grad_kl, {_SIMILARITY}, float tau, "
                             "bool peer_grad) -> (Tensor, Tensor, Tensor, Tensor)",
    "gat_aggregate_forward": "(Tensor rowptr, Tensor col, Tensor x, Tensor alpha_src, Tensor? alpha_dst, "
                             "float negative_slope, float dropout, int seed, bool add_self_loops) "
                             "-> (Tensor, Tensor)",
    "gat_aggregate_backward": "(Tensor rowptr, Tensor col, Tensor rowptr_t, Tensor col_t, Tensor perm_t, "
                              "Tensor x, Tensor alpha_src, Tensor? alpha_dst, Tensor lse, Tensor grad_out, "
                              "float negative_slope, float dropout, int seed, bool add_self_loops) "
                              "-> (Tensor, Tensor, Tensor)",
}

OPTIONAL_SCHEMAS = {
    "structure_kl_forward_with_grad_state": "(Tensor rowptr, Tensor col, Tensor s_dst, Tensor s_src, "
                                            "Tensor p_dst, Tensor p_src, "
                                            f"{_SIMILARITY}, float tau) "
                                            "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "structure_kl_student_backward": "(Tensor rowptr_t, Tensor col_t, Tensor perm_t, Tensor s_dst, "
                                     "Tensor s_src, Tensor dst_grad, Tensor src_coef, Tensor grad_kl, "
                                     f"{_SIMILARITY}, float tau, bool combined) -> (Tensor, Tensor)",
    "linear": "(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
}

BACKEND_FUNCTIONS = tuple(SCHEMAS)
OPTIONAL_FUNCTIONS = tuple(OPTIONAL_SCHEMAS)


def parameters(name: str) -> list:
    """The parameter names of backend function ``name``, in order, from its schema."""
    schema = {**SCHEMAS, **OPTIONAL_SCHEMAS}[name]
    args = schema[1:schema.index(")")]
    return [a.split()[-1].split("=")[0] for a in args.split(",")]


@lru_cache(maxsize=None)
def define(namespace: str) -> torch.library.Library:
    """Declare every backend function's schema in ``namespace`` (once per process); the
    returned library must stay alive for the ops to stay defined, hence the cache."""
    library = torch.library.Library(namespace, "FRAGMENT")
    for name, schema in {**SCHEMAS, **OPTIONAL_SCHEMAS}.items():
        library.define(name + schema)
    return library


def registered(namespace: str, dispatch_key: str) -> frozenset:
    """The backend functions with a kernel registered in ``namespace`` for ``dispatch_key``."""
    def has_kernel(name):
        try:
            return torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{name}", dispatch_key)
        except RuntimeError:  # not declared in this namespace
            return False

    return frozenset(name for name in (*SCHEMAS, *OPTIONAL_SCHEMAS) if has_kernel(name))
