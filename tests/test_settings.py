"""The run-time switches: read in fastalign/settings.py alone, listed in its table and in
docs/architecture.md, never written by the library."""

import re
from pathlib import Path

import pytest

from fastalign import settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastalign"


def _sources():
    return [p for p in PACKAGE.rglob("*.py") if p.name != "_build_info.py"]


def test_only_settings_reads_the_environment():
    readers = []
    for path in _sources():
        if path.name == "settings.py" and path.parent == PACKAGE:
            continue
        text = path.read_text()
        # launcher variables of torchrun and OpenMP's own are read where they are used
        for m in re.finditer(r"os\.environ(?:\.get)?\(?\[?[\"']([A-Z_]+)", text):
            if m.group(1) not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMP_NUM_THREADS"):
                readers.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
        if "os.getenv" in text:
            readers.append(f"{path.relative_to(ROOT)}: os.getenv")
    assert readers == []


def test_the_compiled_kernels_read_no_environment():
    """C++ and CUDA get their switches from Python (e.g. FASTALIGN_CUDA_SPLIT through
    fastalign.backends.cuda), so a value set in a running process counts."""
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh")]
    assert sources
    assert [str(p.relative_to(ROOT)) for p in sources if re.search(r"\bgetenv\b", p.read_text())] == []


def test_values_are_read_when_used_for_the_cuda_split(monkeypatch):
    monkeypatch.setenv("FASTALIGN_CUDA_SPLIT", "512")
    assert settings.cuda_split() == 512
    monkeypatch.setenv("FASTALIGN_CUDA_SPLIT", "-1")
    with pytest.raises(ValueError, match="FASTALIGN_CUDA_SPLIT must be a positive int, got '-1'"):
        settings.cuda_split()


def test_the_library_never_writes_the_environment():
    writes = re.compile(r"os\.environ\[[^\]]+\]\s*=|os\.environ\.(setdefault|update|pop)|os\.putenv|del os\.environ")
    assert [str(p.relative_to(ROOT)) for p in _sources() if writes.search(p.read_text())] == []


def test_every_switch_is_in_both_tables():
    read = set(re.findall(r"\"((?:FASTALIGN|TRITON)_[A-Z_]+)\"", (PACKAGE / "settings.py").read_text()))
    assert {"FASTALIGN_DATA", "FASTALIGN_BACKEND", "TRITON_INTERPRET"} <= read
    docs = (ROOT / "docs" / "architecture.md").read_text()
    for name in read:
        assert f"``{name}``" in settings.__doc__, name
        assert f"`{name}`" in docs, name


def test_values_are_read_when_used(monkeypatch):
    monkeypatch.setenv("FASTALIGN_TRITON_SPLIT", "128")
    assert settings.triton_split() == 128
    monkeypatch.setenv("FASTALIGN_TRITON_SPLIT", "0")
    with pytest.raises(ValueError, match="FASTALIGN_TRITON_SPLIT must be a positive int, got '0'"):
        settings.triton_split()
    monkeypatch.delenv("FASTALIGN_TRITON_SPLIT")
    assert settings.triton_split() is None
    monkeypatch.setenv("FASTALIGN_DATA", "")
    assert settings.data_root() is None
