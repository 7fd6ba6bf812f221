"""Data for the examples: a Planetoid data set copied to a temporary folder (the shared
folder is read-only and PyG writes processed/ next to raw/), or a synthetic graph."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch


def data_root(root=None):
    if root:
        return Path(root)
    if os.environ.get("FASTALIGN_DATA"):
        return Path(os.environ["FASTALIGN_DATA"])
    candidate = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    return candidate if candidate.is_dir() else None


def load(name="Cora", root=None, device="cpu"):
    """(data, description): PyG's Planetoid ``name`` when its files are found, else a
    synthetic 4-class graph with class-correlated features and edges."""
    root = data_root(root)
    if root is not None and (root / name / "raw").is_dir():
        try:
            from torch_geometric.datasets import Planetoid

            tmp = Path(tempfile.mkdtemp(prefix="fastalign-example-"))
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
            shutil.copytree(root / name, tmp / name)
            data = Planetoid(str(tmp), name)[0].to(device)
            return data, f"{name} from {root} (copied to {tmp})"
        except Exception as exc:  # noqa: BLE001 - fall back to synthetic data
            print(f"could not load {name} ({exc}); using a synthetic graph")
    return synthetic(device=device), "a synthetic 4-class graph (no data set found)"


def synthetic(num_nodes=2000, num_classes=4, num_features=64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (num_nodes,), generator=gen)
    means = torch.randn(num_classes, num_features, generator=gen)
    x = means[y] + 2.0 * torch.randn(num_nodes, num_features, generator=gen)
    src = torch.randint(0, num_nodes, (8 * num_nodes,), generator=gen)
    # 80% of the edges stay within the class
    same = torch.rand(src.numel(), generator=gen) < 0.8
    by_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    dst = torch.randint(0, num_nodes, (src.numel(),), generator=gen)
    for c in range(num_classes):
        pick = same & (y[src] == c)
        members = by_class[c]
        dst[pick] = members[torch.randint(0, members.numel(), (int(pick.sum()),), generator=gen)]
    keep = src != dst
    edge_index = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
    perm = torch.randperm(num_nodes, generator=gen)
    train, val, test = (torch.zeros(num_nodes, dtype=torch.bool) for _ in range(3))
    train[perm[:200]], val[perm[200:700]], test[perm[700:1700]] = True, True, True
    data = SimpleNamespace(x=x, y=y, edge_index=edge_index, train_mask=train, val_mask=val,
                           test_mask=test, num_nodes=num_nodes)
    for key in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        setattr(data, key, getattr(data, key).to(device))
    return data
