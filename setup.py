"""Build fastalign and its compiled extensions.

* ``fastalign._C``: the C++/OpenMP CPU kernels (csrc/cpu), always built.
* ``fastalign._C_cuda``: the CUDA kernels (csrc/cuda), built only where torch has CUDA
  and a CUDA toolkit is found (set FASTALIGN_NO_CUDA=1 to skip it).
* kernels/ (Triton) is installed as the pure-Python package ``fastalign.kernels``.

torch must already be installed: build with ``pip install --no-build-isolation``.
"""

import glob
import os

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover
    raise SystemExit(
        "fastalign's build needs torch installed first; then run "
        "`pip install --no-build-isolation .`"
    ) from exc

CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-g0"]


def extensions():
    exts = [
        CppExtension(
            "fastalign._C",
            sorted(glob.glob("csrc/cpu/*.cpp")),
            include_dirs=[os.path.abspath("csrc")],
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
    want_cuda = os.environ.get("FASTALIGN_NO_CUDA", "0") != "1"
    if want_cuda and cuda_sources and torch.version.cuda is not None and CUDA_HOME is not None:
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        exts.append(
            CUDAExtension(
                "fastalign._C_cuda",
                cuda_sources,
                include_dirs=[os.path.abspath("csrc")],
                extra_compile_args={
                    "cxx": ["-O3", "-std=c++17", "-g0"],
                    # No --use_fast_math: the kernels are memory-bound, and exact
                    # expf/logf keep them within float32 tolerance of the reference.
                    "nvcc": ["-O3", "-std=c++17", "-lineinfo"],
                },
            )
        )
    return exts


setup(
    packages=find_packages(include=["fastalign", "fastalign.*"]) + ["fastalign.kernels"],
    package_dir={"fastalign.kernels": "kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
