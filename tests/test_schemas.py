"""The one table of backend functions (fastalign/backends/schemas.py) against everything
that implements or registers them: the reference's signatures, each backend module's
functions, the C++ kernels' registrations and the schemas torch holds once they load."""

import inspect
import re
from pathlib import Path

import pytest
import torch

from fastalign import backends
from fastalign.backends import reference, schemas

ROOT = Path(__file__).resolve().parents[1]
ALL = {**schemas.SCHEMAS, **schemas.OPTIONAL_SCHEMAS}


def _parameters(fn):
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize("name", schemas.BACKEND_FUNCTIONS)
def test_each_schema_takes_the_reference_parameters_in_order(name):
    assert schemas.parameters(name) == _parameters(getattr(reference, name))


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_each_backend_function_takes_the_schema_parameters(backend):
    try:
        module = __import__(f"fastalign.backends.{backend}", fromlist=["_"])
    except ImportError as exc:  # triton is optional
        pytest.skip(f"fastalign.backends.{backend} does not import here: {exc}")
    names = [n for n in ALL if hasattr(module, n)]
    # the adapters of the C++ and CUDA kernels are plain functions for every table entry
    # they can serve, whatever this install built
    expected = ALL if backend == "cpu" else (schemas.SCHEMAS if backend == "cuda" else module.FUNCTIONS)
    assert set(expected) <= set(names)
    for name in names:
        assert _parameters(getattr(module, name)) == schemas.parameters(name), name


def test_the_reference_implements_every_function_and_no_fast_path():
    assert reference.FUNCTIONS == frozenset(schemas.BACKEND_FUNCTIONS)


def test_the_cpu_kernels_register_every_function_for_the_declared_schemas():
    cpu = backends.get("cpu")
    assert cpu.FUNCTIONS == frozenset(ALL)
    for name in ALL:
        registered = getattr(torch.ops.fastalign_cpu, name).default._schema
        assert [a.name for a in registered.arguments] == schemas.parameters(name), name
        assert str(registered).endswith(ALL[name].split("->")[1].strip()), name


@pytest.mark.parametrize("folder", ["cpu", "cuda"])
def test_the_cpp_sources_register_kernels_only(folder):
    """No schema is written in C++: the sources hold TORCH_LIBRARY_IMPL blocks whose names
    are table entries, each registered once."""
    text = "".join(p.read_text() for p in sorted((ROOT / "csrc" / folder).glob("*.cpp")))
    assert not re.search(r"m\.def\(\"\w+\(|TORCH_LIBRARY(_FRAGMENT)?\(", text)
    names = re.findall(r'm\.impl\("(\w+)"', text)
    assert names and len(names) == len(set(names))
    assert set(names) <= set(ALL)


def test_define_is_once_per_namespace():
    assert schemas.define("fastalign_cpu") is schemas.define("fastalign_cpu")


def test_registered_reads_the_dispatcher():
    lib = torch.library.Library("fastalign_schemas_test", "FRAGMENT")
    lib.define("spmm_forward" + schemas.SCHEMAS["spmm_forward"])
    assert schemas.registered("fastalign_schemas_test", "CPU") == frozenset()
    lib.impl("spmm_forward", lambda *a: None, "CPU")
    assert schemas.registered("fastalign_schemas_test", "CPU") == {"spmm_forward"}
    assert schemas.registered("fastalign_schemas_test", "CUDA") == frozenset()
