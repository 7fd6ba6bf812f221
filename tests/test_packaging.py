"""The package as a user receives it: the sdist holds everything the build reads (every
source and header the extensions include, the docs, examples and test helpers), builds
and installs into a fresh environment, where ``fastalign._C`` loads; the metadata says
what a release must (an SPDX license with its file, classifiers, authors)."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
import threading
import venv
from pathlib import Path

import pytest

import background_jobs
from fastalign.backends import schemas

ROOT = Path(__file__).resolve().parents[1]
RUN_LAST = True  # it waits for its background job


_SDIST_LOCK = threading.Lock()
_SDIST = {}


def _built_sdist() -> Path:
    """The sdist of this tree, built once for the tests below and the install job: `setup.py
    sdist` stages the files in the tree's root, so two builds at once (the job runs on a
    worker thread) would delete each other's. Its folder goes when the test process exits."""
    with _SDIST_LOCK:
        if "path" not in _SDIST:
            work = Path(tempfile.mkdtemp(prefix="fastalign-sdist-"))
            atexit.register(shutil.rmtree, work, True)
            proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(work)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError("the sdist did not build:\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
            (_SDIST["path"],) = work.glob("fastalign-*.tar.gz")
        return _SDIST["path"]


@pytest.fixture(scope="module")
def sdist():
    return _built_sdist()


def _members(path):
    with tarfile.open(path) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    return {n[len(top) + 1:] for n in names if "/" in n}


def test_sdist_holds_every_file_the_build_reads(sdist):
    members = _members(sdist)
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp", ".cu", ".cuh")]
    assert sources
    for p in sources:
        rel = p.relative_to(ROOT).as_posix()
        assert rel in members, f"{rel} is missing from the sdist"
        for inc in re.findall(r'#include "([^"]+)"', p.read_text()):  # from csrc/ or beside the file
            here = (p.parent / inc).resolve()
            found = here.exists() and here.relative_to(ROOT).as_posix() in members
            assert found or f"csrc/{inc}" in members, f"{rel} includes {inc}, missing from the sdist"
    for rel in ("LICENSE", "README.md", "setup.py", "pyproject.toml", "tests/helpers.py", "tests/conftest.py",
                "examples/pyg_swap.py", "docs/architecture.md", "fastalign/kernels/spmm.py"):
        assert rel in members, f"{rel} is missing from the sdist"
    assert not any(m.endswith((".so", ".pyc")) or m.startswith("bench/results") for m in members)
    assert "fastalign/_build_info.py" not in members  # written by each build


def test_metadata_is_complete(sdist):
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO") and m.name.count("/") == 1)
        info = tar.extractfile(member).read().decode()
    assert re.search(r"^License-Expression: MIT$", info, re.M), info[:1500]
    assert re.search(r"^License-File: LICENSE$", info, re.M)
    assert re.search(r"^Author: ", info, re.M)
    assert info.count("Classifier: ") >= 5
    assert "MIT License" in (ROOT / "LICENSE").read_text()


SKIP_SDIST_BUILD = os.environ.get("FASTALIGN_SKIP_SDIST_BUILD") == "1"
_INSTALL = {}  # what the install job prepared: the fresh environment's python and env


def _sdist_install_command():
    """The sdist, and a fresh venv that sees the torch of the environment running the
    tests (the build needs it, and pip must not fetch another): then pip installing the
    sdist alone there, the background job's command (tests/background_jobs.py)."""
    sdist = _built_sdist()
    work = sdist.parent
    env_dir = work / "venv"
    # no pip of its own: the one seen through this environment (and its setuptools >= 77)
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    # system_site_packages shows the *base* interpreter's packages; where the tests run in a
    # venv, torch lives in that venv instead. A .pth file puts this environment's
    # site-packages on the new one's path, after its own (where the sdist installs).
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_tests_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # unoptimised kernels: this checks that the sdist builds and loads, in a third of the time
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", FASTALIGN_BUILD_OPT="-O0")
    env.pop("PYTHONPATH", None)
    _INSTALL.update(python=python, env_dir=env_dir, env=env, work=work)
    cmd = [str(python), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", str(sdist)]
    return cmd, env


# the install (40 s) runs on the second core beside the suite (tests/background_jobs.py)
background_jobs.register("sdist-install", _sdist_install_command)
BACKGROUND_JOBS = () if SKIP_SDIST_BUILD else ("sdist-install",)


@pytest.mark.skipif(SKIP_SDIST_BUILD, reason="FASTALIGN_SKIP_SDIST_BUILD=1")
def test_sdist_builds_and_installs_into_a_fresh_environment():
    """The package installed from the sdist alone into a fresh venv, imported from
    elsewhere: the compiled CPU kernels load. Whether the tests run in the system Python,
    a venv or a conda environment."""
    proc = background_jobs.result("sdist-install")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    python, env_dir, env, tmp_path = (_INSTALL[k] for k in ("python", "env_dir", "env", "work"))
    code = ("import fastalign, fastalign._C, fastalign.kernels; from fastalign.backends import cpu, available_backends; "
            "print(fastalign.__file__); print(len(cpu.FUNCTIONS)); print(available_backends('cpu'))")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    where, count, available = proc.stdout.strip().splitlines()
    assert where.startswith(str(env_dir)), f"imported {where}, not the installed sdist"
    # every backend function and fast path the schema table lists has its C++ kernel
    assert int(count) == len({**schemas.SCHEMAS, **schemas.OPTIONAL_SCHEMAS}) and "'cpu'" in available
