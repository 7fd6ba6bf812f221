"""``fastalign info``: what this installation is and what it will run.

The version, Python, torch (and its CUDA), triton and PyG; which compiled extensions
loaded (and why one did not); and, per device type, the backend each op's automatic
choice takes.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Dict

from . import settings

# op -> the backend functions its automatic choice needs (as the ops ask for them)
OPS = {
    "spmm": ("spmm_forward", "sddmm"),
    "gcn_aggregate": ("gcn_aggregate",),
    "edge_similarity": ("edge_similarity", "edge_similarity_backward"),
    "edge_softmax": ("edge_softmax", "edge_softmax_backward"),
    "structure_kl": ("structure_kl_forward", "structure_kl_backward"),
}


def _version(distribution: str) -> str:
    """An installed distribution's version from its metadata: importing PyG or triton only
    to print a version costs seconds."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect() -> Dict:
    import torch

    import fastalign
    from fastalign import backends, extensions

    facts = {
        "fastalign": fastalign.__version__,
        "location": os.path.dirname(os.path.abspath(fastalign.__file__)),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "triton": _version("triton"),
        "torch_geometric": _version("torch_geometric"),
        "threads": torch.get_num_threads(),
        "built_against": extensions.build_info(),
        "extensions": {f"fastalign.{n}": extensions.status(n) for n in extensions.EXTENSIONS},
        "automatic_backend": {},
    }
    env = settings.backend()
    if env:
        facts[backends.ENV_VAR] = env
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        d = torch.device(dev)
        facts["automatic_backend"][dev] = {op: backends.resolve(op, None, d, fns) for op, fns in OPS.items()}
    return facts


def format_info(facts: Dict) -> str:
    lines = [
        f"fastalign {facts['fastalign']} ({facts['location']})",
        f"python {facts['python']}",
        f"platform {facts['platform']}",
        f"torch {facts['torch']} (CUDA {facts['torch_cuda'] or 'none'}), triton {facts['triton']}, "
        f"torch_geometric {facts['torch_geometric']}",
        f"CUDA devices: {', '.join(facts['cuda_devices']) or 'none'}",
        f"CPU threads: {facts['threads']}",
    ]
    built = facts["built_against"]
    if built:
        lines.append(f"extensions built against torch {built.get('torch')} (CUDA {built.get('cuda') or 'none'})")
    for name, st in facts["extensions"].items():
        lines.append(f"{name}: {st['status']}" + (f" ({st['error']})" if st.get("error") else ""))
    if "FASTALIGN_BACKEND" in facts:
        lines.append(f"FASTALIGN_BACKEND={facts['FASTALIGN_BACKEND']} (overrides the automatic choice)")
    for dev, choice in facts["automatic_backend"].items():
        lines.append(f"automatic backend on {dev}: " + ", ".join(f"{op} -> {b}" for op, b in choice.items()))
    if "cuda" not in facts["automatic_backend"]:
        lines.append("automatic backend on cuda: no CUDA device here")
    return "\n".join(lines)
