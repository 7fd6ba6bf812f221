"""Build fastalign and its compiled extensions.

* ``fastalign._C``: the C++/OpenMP CPU kernels (csrc/cpu), always built.
* ``fastalign._C_cuda``: the CUDA kernels (csrc/cuda), built only where torch has CUDA
  and a CUDA toolkit is found (set FASTALIGN_NO_CUDA=1 to skip it).
* ``fastalign.kernels``: the Triton kernels, pure Python.
* ``fastalign/_build_info.py`` records the torch (and CUDA) the extensions were built
  against, so that a load failure can say so (fastalign.extensions, ``fastalign info``).

torch must be importable by the build: build with ``pip install --no-build-isolation``
(pip's default isolated build environment has no torch).
"""

import glob
import os
import platform
import warnings

from setuptools import find_packages, setup

# torch warns at import when numpy is absent, as it is while pip builds fastalign before
# installing its dependencies; the build does not use numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover
    raise SystemExit(
        "fastalign's build could not import torch ({}). The extensions are compiled against "
        "the torch that is installed, so the build must see it: install torch first, then build "
        "without pip's isolated environment (which has no torch): "
        "`pip install --no-build-isolation <fastalign source>`.".format(exc)
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))
# FASTALIGN_BUILD_OPT=-O0 builds unoptimised kernels in a fraction of the time (the
# packaging test uses it: it checks that the sdist builds and loads, not its speed).
OPT = os.environ.get("FASTALIGN_BUILD_OPT", "-O3")
if OPT not in ("-O0", "-O1", "-O2", "-O3"):
    raise SystemExit(f"FASTALIGN_BUILD_OPT must be one of -O0 .. -O3, got {OPT!r}")
# No -std: torch's build helper picks the standard its headers need (C++20 in recent
# releases, whose headers warn under C++17; torch 2.14's refuse it).
CXX_FLAGS = [OPT, "-fopenmp", "-g0"]


def want_cuda():
    return (os.environ.get("FASTALIGN_NO_CUDA", "0") != "1" and torch.version.cuda is not None
            and CUDA_HOME is not None)


def extensions():
    exts = [
        CppExtension(
            "fastalign._C",
            sorted(glob.glob("csrc/cpu/*.cpp")),
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ]
    # The kernels (csrc/cuda/kernels, plain CUDA C++) and the torch glue (csrc/cuda).
    cuda_sources = (
        sorted(glob.glob("csrc/cuda/kernels/*.cu"))
        + sorted(glob.glob("csrc/cuda/*.cu"))
        + sorted(glob.glob("csrc/cuda/*.cpp"))
    )
    if cuda_sources and want_cuda():
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        exts.append(
            CUDAExtension(
                "fastalign._C_cuda",
                cuda_sources,
                include_dirs=[os.path.join(HERE, "csrc")],
                extra_compile_args={
                    "cxx": ["-O3", "-g0"],
                    # No --use_fast_math: the kernels are memory-bound, and exact
                    # expf/logf keep them within float32 tolerance of the reference.
                    "nvcc": ["-O3", "-lineinfo"],
                },
            )
        )
    return exts


def write_build_info():
    build = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_extension": bool(want_cuda()),
        "python": platform.python_version(),
    }
    path = os.path.join(HERE, "fastalign", "_build_info.py")
    with open(path, "w") as f:
        f.write('"""Written by setup.py at build time: what the extensions were built against."""\n\n')
        f.write(f"BUILD = {build!r}\n")


write_build_info()
setup(
    packages=find_packages(include=["fastalign", "fastalign.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
