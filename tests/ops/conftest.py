import pytest

from fastalign import backends
from helpers import KERNEL_BACKENDS, OP_BACKENDS


@pytest.fixture(params=OP_BACKENDS)
def backend(request):
    """Each backend that runs the public ops on CPU tensors here."""
    return request.param


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """Each compiled backend here, by name (the reference is what it is held to)."""
    return request.param


@pytest.fixture
def kernels(kernel_backend):
    """The backend module of ``kernel_backend``: its backend functions, called directly."""
    return backends.get(kernel_backend)
