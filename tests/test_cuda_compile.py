"""CI gate for the CUDA kernels (no GPU needed): every csrc/cuda/kernels/*.cu compiles with
``nvcc -arch=sm_90`` under the flags torch's CUDAExtension adds, the torch glue
(csrc/cuda/binding.cpp) compiles against torch's headers, and the launcher API, the glue
and the Python adapter agree with each other.

Each compile takes 5-50 s on a small machine (the glue's, with g++, about 15 s):
they run in the background from the start of the test run, on the second core
(tests/background_jobs.py, started by conftest.py); set FASTALIGN_SKIP_NVCC=1 to skip
them locally (the static checks still run).
"""

import atexit
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import background_jobs

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNELS = sorted((CUDA_DIR / "kernels").glob("*.cu"))
HEADER = CUDA_DIR / "kernels" / "fastalign_cuda.h"
BINDING = CUDA_DIR / "binding.cpp"

# torch.utils.cpp_extension's COMMON_NVCC_FLAGS: the kernels must build under them
# (no implicit __half / __nv_bfloat16 conversions or operators).
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]


def _nvcc():
    path = shutil.which("nvcc")
    if path is None and os.environ.get("CUDA_HOME"):
        candidate = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        path = str(candidate) if candidate.exists() else None
    return path


def test_kernel_files_exist():
    assert KERNELS, "no CUDA kernel files under csrc/cuda/kernels"
    assert HEADER.exists()


def _scratch(prefix):
    """A fresh temporary folder, removed when the test process exits (the compiles may
    run even where their tests are deselected)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _kernel_command(source):
    """nvcc for one kernel file (the object goes to a fresh temporary folder). Its -O is
    the host compiler's: the launchers are built unoptimised (half the host compile), the
    device code as the build makes it."""
    out = _scratch("fastalign-nvcc-") / (source.stem + ".o")
    return [
        _nvcc(), "-arch=sm_90", "-std=c++20", "-O0", "-c", str(source), "-o", str(out),
        "-I", str(ROOT / "csrc"), "-Werror", "all-warnings", *TORCH_NVCC_FLAGS,
    ]


def _skip_without_nvcc():
    if _nvcc() is None:
        pytest.skip("nvcc not found (no CUDA toolkit on this machine)")
    if os.environ.get("FASTALIGN_SKIP_NVCC") == "1":
        pytest.skip("FASTALIGN_SKIP_NVCC=1")


# The compiles run in the background from the start of the test run (tests/background_jobs.py):
# the longest first.
for _source in sorted(KERNELS, key=lambda p: -p.stat().st_size):
    background_jobs.register(f"nvcc:{_source.name}", lambda s=_source: _kernel_command(s))
BACKGROUND_JOBS = ([] if _nvcc() is None or os.environ.get("FASTALIGN_SKIP_NVCC") == "1" else
                   [f"nvcc:{p.name}" for p in sorted(KERNELS, key=lambda p: -p.stat().st_size)] + ["g++:binding"])
RUN_LAST = True  # after the rest of the suite, which the compiles overlap


@pytest.mark.parametrize("source", KERNELS, ids=[p.name for p in KERNELS])
def test_kernel_compiles_for_sm90(source):
    _skip_without_nvcc()
    proc = background_jobs.result(f"nvcc:{source.name}")
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))}\n{proc.stdout}\n{proc.stderr}"


def _cuda_include_dir(nvcc):
    """The toolkit's include directory, as nvcc itself reports it (nvcc may be a wrapper
    script outside the toolkit, so its own path says nothing)."""
    probe = subprocess.run([nvcc, "--dryrun", "-c", "x.cu", "-o", "x.o"], capture_output=True, text=True)
    found = re.search(r'INCLUDES="-I([^"]+?)"', probe.stdout + probe.stderr)
    return Path(found.group(1).strip()) if found else None


def _binding_setup():
    """(argv of the g++ compile of the glue, its object file), or (None, why not)."""
    import sysconfig

    import torch
    from torch.utils import cpp_extension

    nvcc, gxx = _nvcc(), shutil.which("g++")
    if nvcc is None or gxx is None:
        return None, "needs nvcc (for the CUDA runtime headers) and g++"
    cuda_include = _cuda_include_dir(nvcc)
    if cuda_include is None or not (cuda_include / "cuda_runtime_api.h").exists():
        return None, f"CUDA runtime headers not found (nvcc reported {cuda_include})"
    tmp = _scratch("fastalign-glue-")
    torch_includes = [Path(p) for p in cpp_extension.include_paths()]
    generated = Path("c10/cuda/impl/cuda_cmake_macros.h")
    if not any((p / generated).exists() for p in torch_includes):
        # A CUDA build of torch generates it with this one line (c10/cuda/impl/
        # cuda_cmake_macros.h.in); a CPU build ships without it.
        (tmp / generated).parent.mkdir(parents=True)
        (tmp / generated).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    obj = tmp / "binding.o"
    cmd = [
        gxx, "-std=c++20", "-c", "-O0", "-g0", "-fPIC", str(BINDING), "-o", str(obj),
        "-I", str(ROOT / "csrc"), "-I", str(tmp),
        *[arg for p in torch_includes for arg in ("-isystem", str(p))],
        "-isystem", sysconfig.get_paths()["include"], "-isystem", str(cuda_include),
        "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C_cuda",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
        "-Wall", "-Wextra", "-Werror",
    ]
    return cmd, obj


_BINDING = {}


def _binding_command():
    cmd, obj = _binding_setup()
    _BINDING["obj"] = obj
    if cmd is None:  # nothing to compile: a command that says why
        return ["sh", "-c", f"echo '{obj}'; exit 77"]
    return cmd


background_jobs.register("g++:binding", _binding_command)


def test_binding_compiles_against_torch_headers():
    """The glue is otherwise compiled only where torch has CUDA (a GPU machine):
    compile it here with g++ against the CPU torch's headers, which include c10/cuda
    and ATen's CUDA headers but not the one header CMake generates for a CUDA build.
    It then needs no more than the launchers of fastalign_cuda.h to link."""
    _skip_without_nvcc()
    proc = background_jobs.result("g++:binding")
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, f"{' '.join(map(str, proc.args))}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    nm = shutil.which("nm")
    if nm is None:
        return
    undefined = subprocess.run([nm, "-u", str(_BINDING["obj"])], capture_output=True, text=True).stdout
    used = set(re.findall(r"\b(fa_\w+)\b", undefined))
    assert used, "the glue calls no launcher"
    assert used <= _launchers_declared(), used - _launchers_declared()


def _launchers_declared():
    text = HEADER.read_text()
    return set(re.findall(r"^(?:cudaError_t|size_t|int64_t)\s+(fa_\w+)\(", text, re.M))


def test_every_launcher_is_defined_once():
    defined = {}
    for source in KERNELS:
        for name in re.findall(r'extern "C"\s+(?:cudaError_t|size_t|int64_t)\s+(fa_\w+)\(',
                               source.read_text()):
            defined.setdefault(name, []).append(source.name)
    declared = _launchers_declared()
    assert declared, "no launchers found in the header"
    missing = sorted(declared - set(defined))
    assert not missing, f"declared in fastalign_cuda.h but not defined: {missing}"
    dup = {k: v for k, v in defined.items() if len(v) > 1}
    assert not dup, f"defined more than once: {dup}"
    extra = sorted(set(defined) - declared)
    assert not extra, f"defined but not declared in fastalign_cuda.h: {extra}"


def test_binding_registers_every_backend_function_and_defines_no_schema():
    """The glue registers a kernel for each backend function (their schemas are declared
    once, in fastalign/backends/schemas.py) and declares none of its own."""
    from fastalign.backends import BACKEND_FUNCTIONS

    text = BINDING.read_text()
    implemented = re.findall(r'm\.impl\("(\w+)"', text)
    assert sorted(implemented) == sorted(BACKEND_FUNCTIONS)
    assert not re.search(r"m\.def\(\"\w+\(|TORCH_LIBRARY\(", text)


def test_adapter_wraps_every_registered_function():
    from fastalign.backends import cuda as adapter

    for name in re.findall(r'm\.impl\("(\w+)"', BINDING.read_text()):
        assert callable(getattr(adapter, name, None)), f"fastalign.backends.cuda lacks {name}"
