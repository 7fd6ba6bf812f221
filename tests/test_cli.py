"""The ``fastalign`` command as a new user meets it: --help and --version are instant,
``info`` says what is installed and what will run, and mistakes get one clear line with
the subcommand's usage, not a traceback; and a compiled extension that fails to load is
reported once, with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import pytest

from fastalign import cli, extensions


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastalign.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_and_version_are_fast():
    t = time.perf_counter()
    proc = run("--help")
    elapsed = time.perf_counter() - t
    assert proc.returncode == 0 and "train" in proc.stdout and "info" in proc.stdout
    assert elapsed < 5, f"--help took {elapsed:.1f} s"  # no torch import (about 0.2 s alone)
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"fastalign {__import__('fastalign').__version__}"


def test_info_says_what_is_installed_and_what_runs():
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("fastalign ") and "torch " in out and "fastalign._C: " in out
    assert "automatic backend on cpu: spmm -> " in out
    facts = json.loads(run("info", "--json").stdout)
    assert set(facts["extensions"]) == {"fastalign._C", "fastalign._C_cuda"}
    assert facts["automatic_backend"]["cpu"]["structure_kl"] in ("cpu", "torch")


def test_info_reads_versions_without_importing_pyg_or_triton():
    code = ("import sys; from fastalign.info import collect; f = collect(); "
            "print(f['torch_geometric'], f['triton'], 'torch_geometric' in sys.modules, 'triton' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    *versions, pyg_imported, triton_imported = proc.stdout.split()
    assert pyg_imported == "False" and triton_imported == "False"
    assert all(v[0].isdigit() or v == "not" for v in versions), versions


def test_info_into_a_closed_pipe_is_not_an_error():
    """`fastalign info | head -1`: the reader has gone before the output is written (here
    always: the pipe's read end is closed first); no BrokenPipeError traceback, status 0."""
    import os

    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "fastalign.cli", "info"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, words", [
    (["train", "--device", "gpu"], "unknown device 'gpu'"),
    (["train", "--dataset", "cora", "--root", "/nonexistent/fastalign-data"], "does not exist"),
    (["train", "--dataset", "Cora", "--root", "/nonexistent/fastalign-data"], "does not exist"),  # PyG's spelling
    (["train", "--nodes", "5"], "num_nodes must be at least 181"),  # the minimum, not only "too small"
    (["train", "--lr", "inf"], "expected a positive finite number, got inf"),
    (["train", "--avg-degree", "-3"], "expected a positive finite number, got -3"),
    (["train", "--avg-degree", "nan"], "expected a positive finite number, got nan"),
    (["train", "--avg-degree", "0"], "expected a positive finite number, got 0"),
    (["train", "--seeds", "0", "1", "0"], "--seeds: 0 given more than once"),
    (["train", "--json", "."], "--json . is a folder"),  # refused before training, not after
    (["train", "--dataset", "imagenet"], "invalid choice"),
])
def test_mistakes_get_one_clear_line(args, words):
    proc = run(*args)
    assert proc.returncode == 2
    assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "usage: fastalign train" in proc.stderr  # the subcommand's usage
    assert len(proc.stderr.splitlines()) < 15


def test_train_table_says_what_it_reports(capsys):
    assert cli.main(["train", "--epochs", "3", "--log-every", "0"]) == 0
    out = capsys.readouterr().out
    assert "best-validation epoch" in out and "standard deviation" in out


def test_a_failed_extension_load_is_reported_with_its_reason(monkeypatch):
    import importlib

    real = importlib.import_module

    def broken(name, *a, **k):
        if name == "fastalign._C":
            raise ImportError("undefined symbol: _ZN3c106detail14torchCheckFail")
        return real(name, *a, **k)

    import torch

    monkeypatch.setattr(extensions, "_STATE", {})
    monkeypatch.setattr(extensions.importlib, "import_module", broken)
    monkeypatch.setattr(extensions, "build_info", lambda: {"torch": torch.__version__})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert extensions.load("_C") is None
    (w,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    text = str(w.message)
    assert "failed to load" in text and "undefined symbol" in text and "torch other than" in text
    assert "--no-build-isolation" in text
    assert "failed to load" in extensions.why_unavailable("cpu")


def test_an_extension_built_for_another_torch_is_not_loaded(monkeypatch):
    """Built against one torch, run under another (a wheel that pulled a newer torch):
    refused before import, with one warning that names both versions, and the reference
    runs instead; never imported into a process whose torch may not match its ABI."""
    import importlib

    imported = []
    real = importlib.import_module
    monkeypatch.setattr(extensions, "_STATE", {})
    monkeypatch.setattr(extensions.importlib, "import_module",
                        lambda name, *a, **k: imported.append(name) or real(name, *a, **k))
    monkeypatch.setattr(extensions, "build_info", lambda: {"torch": "2.0.0+cpu"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert extensions.load("_C") is None
        assert extensions.load("_C") is None  # once
    (w,) = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    import torch

    assert f"built against torch 2.0.0+cpu, but this is torch {torch.__version__}" in str(w.message)
    assert "fastalign._C" not in imported
    assert "built against torch 2.0.0+cpu" in extensions.why_unavailable("cpu")


def test_json_outputs_are_strict(tmp_path):
    """NaN and infinities are written as null: RFC 8259 JSON that strict readers accept."""
    import json

    from fastalign.bench.report import write_json

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    path = tmp_path / "a.json"
    write_json({"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2, "x")}, path)
    assert json.loads(path.read_text(), parse_constant=refuse) == {"a": None, "b": [1.0, None, {"c": None}],
                                                                    "d": [2, "x"]}
    from fastalign.cli import main

    out = tmp_path / "train.json"
    assert main(["train", "--epochs", "1", "--nodes", "200", "--json", str(out), "--log-every", "0"]) == 0
    json.loads(out.read_text(), parse_constant=refuse)


def test_sigterm_while_loading_leaves_no_temporary_copy(tmp_path):
    """A read-only data set is read through a temporary copy; SIGTERM during the load
    must remove it (the command ends through Python, exit status 143)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = os.environ.get("FASTALIGN_DATA")
    if not root or not os.path.isdir(os.path.join(root, "Cora", "raw")):
        pytest.skip("no Cora raw files under $FASTALIGN_DATA")
    pytest.importorskip("torch_geometric")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = (
        "import time, fastalign.datasets as d, fastalign.cli as c\n"
        "d._writable = lambda path: False  # as for a read-only data set\n"
        "real = d._read_planetoid\n"
        "def slow(*a):\n"
        "    time.sleep(30)  # the signal arrives while the copy exists\n"
        "    return real(*a)\n"
        "d._read_planetoid = slow\n"
        "c._exit_on_sigterm()\n"
        f"c.main(['train', '--dataset', 'cora', '--root', {root!r}, '--epochs', '1'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp.glob("fastalign-data-*")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(tmp.glob("fastalign-data-*")), "the temporary copy never appeared"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp.glob("fastalign-data-*")) == []
