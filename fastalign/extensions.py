"""Loading the compiled extensions (``fastalign._C``: the C++ CPU kernels;
``fastalign._C_cuda``: the CUDA kernels), and saying plainly when one does not load.

A missing extension is not an error (the reference backend computes everything), but it
is many times slower, so a load that fails is reported once, with the import error and
what it usually means: a torch other than the one the extension was built against.
``fastalign info`` prints the same facts.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import Dict, Optional

# fastalign.<name> -> (what it holds, the backend it provides)
EXTENSIONS = {
    "_C": ("the C++ CPU kernels", "cpu"),
    "_C_cuda": ("the CUDA kernels", "cuda"),
}
_STATE: Dict[str, dict] = {}


def build_info() -> dict:
    """What setup.py recorded at build time (torch and CUDA versions), or {}."""
    try:
        from . import _build_info
    except ImportError:
        return {}
    return dict(getattr(_build_info, "BUILD", {}))


def _rebuild_hint() -> str:
    return ("rebuild it against the torch in use: `pip install --no-build-isolation --force-reinstall "
            "--no-deps <fastalign source or sdist>`")


def load(name: str, *, warn: bool = True):
    """The extension module ``fastalign.<name>``, or None. A module that exists but fails
    to import is warned about once (RuntimeWarning); one that was never built is warned
    about only where it matters (``_C_cuda`` on a machine with a CUDA device)."""
    if name in _STATE:
        return _STATE[name]["module"]
    what, backend = EXTENSIONS[name]
    state = {"module": None, "status": "", "error": None}
    _STATE[name] = state
    built = importlib.util.find_spec(f"fastalign.{name}") is not None
    if not built:
        state["status"] = "not built"
        if name == "_C_cuda":
            import torch

            if torch.version.cuda is None:
                state["status"] = "not built (this torch has no CUDA)"
            elif warn and torch.cuda.is_available():
                state["status"] = "not built (no CUDA toolkit at build time, or FASTALIGN_NO_CUDA=1)"
                warnings.warn(
                    f"fastalign: {what} (fastalign.{name}) were not built, so the 'cuda' backend is "
                    "unavailable (the 'triton' backend still runs on the GPU). To build them, install "
                    "with a CUDA toolkit present (CUDA_HOME or nvcc on PATH).", RuntimeWarning, stacklevel=3)
        else:
            state["status"] = "not built (an install without compiled code: the reference runs instead)"
            if warn:
                warnings.warn(
                    f"fastalign: {what} (fastalign.{name}) are not built: the '{backend}' backend is "
                    f"unavailable and the pure-PyTorch reference runs instead, several times slower; "
                    f"{_rebuild_hint()}", RuntimeWarning, stacklevel=3)
        return None
    import torch

    against = build_info().get("torch")
    if against and against != torch.__version__:
        # A compiled extension is tied to the torch it was built with (its C++ ABI): one
        # built for another torch may import and then crash or compute garbage.
        state["status"] = f"not loaded: built against torch {against}, this is torch {torch.__version__}"
        if warn:
            warnings.warn(
                f"fastalign: {what} (fastalign.{name}) were built against torch {against}, but this is torch "
                f"{torch.__version__}; they are not loaded, so the '{backend}' backend is unavailable and the "
                f"pure-PyTorch reference runs instead, several times slower: {_rebuild_hint()}",
                RuntimeWarning, stacklevel=3)
        return None
    try:
        module = importlib.import_module(f"fastalign.{name}")
    except (ImportError, OSError) as exc:
        state["status"], state["error"] = "failed to load", f"{type(exc).__name__}: {exc}"
        if warn:  # a known torch mismatch was refused above; an unrecorded one is the usual cause
            warnings.warn(
                f"fastalign: {what} (fastalign.{name}) failed to load ({state['error']}); the '{backend}' "
                f"backend is unavailable and the pure-PyTorch reference runs instead, several times slower. "
                f"The usual cause is a torch other than the one it was built against: {_rebuild_hint()}",
                RuntimeWarning, stacklevel=3)
        return None
    state["module"], state["status"] = module, "loaded"
    return module


def status(name: str) -> dict:
    """{"status": loaded | not built ... | failed to load, "error": the import error or None}."""
    load(name, warn=False)
    return {k: v for k, v in _STATE[name].items() if k != "module"}


def why_unavailable(backend: str) -> Optional[str]:
    """A sentence on why a compiled backend is unavailable, or None."""
    for name, (what, b) in EXTENSIONS.items():
        if b == backend:
            st = status(name)
            if st["status"] != "loaded":
                detail = f": {st['error']}" if st["error"] else ""
                return f"fastalign.{name} ({what}) {st['status']}{detail}"
    return None
