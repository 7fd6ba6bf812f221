#!/usr/bin/env python
"""Build the CUDA extension (fastalign._C_cuda) into the source tree, for the GPU check.

The check runs in a copy of the tree that is not installed, on a machine without an
index: ``pip install`` there can fail for reasons that are not ours (a setuptools older
than the one pyproject.toml's license fields need, pip looking for an index). This
compiles the same sources with the same flags as setup.py through
``torch.utils.cpp_extension.load`` (ninja, ``MAX_JOBS`` parallel), then puts the module
where ``import fastalign._C_cuda`` finds it and writes ``fastalign/_build_info.py``.

    python bench/gpu_build.py [--cpu]      # --cpu: also the C++ CPU kernels (fastalign._C)
    python bench/gpu_build.py --dry-run    # check the sources, build nothing
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_report as R  # noqa: E402  (standard library only)


def sources(name):
    if name == "_C_cuda":
        return (sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/kernels/*.cu")))
                + sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu")))
                + sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cpp"))))
    return sorted(glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp")))


def find_cuda_home():
    """The CUDA toolkit's root for torch.utils.cpp_extension, which otherwise takes the
    folder above ``which nvcc``: wrong where nvcc is a wrapper outside the toolkit (the
    glue then misses cuda_runtime_api.h). Asks nvcc where its headers are and walks up
    to the folder that holds bin/nvcc; None leaves torch's own guess."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return None
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    import re
    import subprocess

    probe = subprocess.run([nvcc, "--dryrun", "-c", "x.cu", "-o", "x.o"], capture_output=True, text=True)
    found = re.search(r'INCLUDES="-I([^"]+?)"', probe.stdout + probe.stderr)
    if not found:
        return None
    folder = os.path.abspath(found.group(1).strip())
    while folder != os.path.dirname(folder):
        if os.path.exists(os.path.join(folder, "bin", "nvcc")):
            return folder
        folder = os.path.dirname(folder)
    return None


def build(name, build_dir):
    home = find_cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
        print(f"gpu_build: CUDA_HOME={home} (from nvcc's include path)", flush=True)
    from torch.utils.cpp_extension import load

    os.makedirs(build_dir, exist_ok=True)
    t0 = time.monotonic()
    common = ["-O3", "-g0"]  # the C++ standard: torch's own choice, as in setup.py
    if name == "_C_cuda":
        mod = load(name, sources(name), extra_include_paths=[os.path.join(ROOT, "csrc")],
                   extra_cflags=common, extra_cuda_cflags=["-O3", "-lineinfo"],
                   build_directory=build_dir, verbose=True, is_python_module=True)
    else:
        mod = load(name, sources(name), extra_include_paths=[os.path.join(ROOT, "csrc")],
                   extra_cflags=common + ["-fopenmp"], extra_ldflags=["-fopenmp"],
                   build_directory=build_dir, verbose=True, is_python_module=True)
    # copied under another name, then renamed: a worker importing the package meanwhile
    # finds the whole module or none
    dest = os.path.join(ROOT, "fastalign", f"{name}.so")
    shutil.copy2(mod.__file__, dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    print(f"gpu_build: {name} built in {time.monotonic() - t0:.0f} s", flush=True)


def write_build_info(cuda):
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_extension": cuda,
            "python": platform.python_version()}
    path = os.path.join(ROOT, "fastalign", "_build_info.py")
    with open(path + ".tmp", "w") as f:
        f.write('"""Written by bench/gpu_build.py: what the extensions were built against."""\n\n')
        f.write(f"BUILD = {info!r}\n")
    os.replace(path + ".tmp", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="also build fastalign._C")
    ap.add_argument("--build-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "fastalign_gpu_build"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    faults = R.Faults()
    faults.at_start()
    missing = [n for n in ("_C_cuda", "_C") if not sources(n)]
    if missing:
        print(f"gpu_build: no sources for {missing}", file=sys.stderr)
        return 1
    if args.dry_run:
        if "build_s" in faults.items:
            faults.sleep(float(faults.items["build_s"][0]))
        if "fail" in faults.items.get("build", []):
            print("gpu_build: failed (injected by the dry run)", file=sys.stderr)
            return 1
        print(f"gpu_build: dry run, {len(sources('_C_cuda'))} CUDA sources found", flush=True)
        return 0
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    write_build_info(cuda=True)
    build("_C_cuda", os.path.join(args.build_dir, "cuda"))
    if args.cpu:
        build("_C", os.path.join(args.build_dir, "cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
