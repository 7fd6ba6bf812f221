"""Data for the examples: a Planetoid data set read through a temporary copy (PyG
writes processed/ next to raw/, and the data folder may be read-only), or a synthetic
graph when asked for (or, with ``auto``, when no Cora is found, saying so)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch


def data_root(root=None):
    """--root, else $FASTALIGN_DATA, else ~/.cache/fastalign/datasets (fastalign's rule)."""
    from fastalign.datasets import default_root

    return Path(root or default_root())


PLANETOID = ("Cora", "CiteSeer", "PubMed")
CHOICES = ("auto", "synthetic") + PLANETOID


def dataset_name(text):
    """--dataset's type: any spelling of a choice (cora, Cora, CORA) -> the choice."""
    import argparse

    for choice in CHOICES:
        if text.lower() == choice.lower():
            return choice
    raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(CHOICES)}")


def load(name="auto", root=None, device="cpu"):
    """(data, description). ``name``: a Planetoid data set (its raw files must be found:
    an error says where they were looked for otherwise), ``synthetic`` (a 4-class graph
    with class-correlated features and edges), or ``auto``: Cora when its files are
    found, else the synthetic graph, and the description says which."""
    if name not in CHOICES:
        raise SystemExit(f"unknown data set {name!r}; choose one of {CHOICES}")
    if name == "synthetic":
        return synthetic(device=device), "a synthetic 4-class graph"
    root = data_root(root)
    wanted = "Cora" if name == "auto" else name
    if root is None or not (root / wanted / "raw").is_dir():
        if name == "auto":
            return synthetic(device=device), "a synthetic 4-class graph (no Cora found: pass --root or set FASTALIGN_DATA)"
        raise SystemExit(f"{wanted} not found: expected {root or '$FASTALIGN_DATA'}/{wanted}/raw (pass --root)")
    from torch_geometric.datasets import Planetoid

    tmp = Path(tempfile.mkdtemp(prefix="fastalign-example-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    # copyfile: the copies must not keep a read-only mode (the folder is removed at exit)
    shutil.copytree(root / wanted / "raw", tmp / wanted / "raw", copy_function=shutil.copyfile)
    data = Planetoid(str(tmp), wanted)[0].to(device)
    return data, f"{wanted} from {root}"


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
