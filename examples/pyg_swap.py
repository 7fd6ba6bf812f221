"""Swap fastalign's GCNConv into an existing PyG model and train it.

    python examples/pyg_swap.py [--root DATASETS] [--dataset auto|synthetic|Cora|CiteSeer|PubMed] [--epochs 200]

The model below is plain PyG code. ``swap_gcnconv`` replaces every
``torch_geometric.nn.GCNConv`` inside it with ``fastalign.nn.GCNConv`` carrying the same
options and state_dict (so the swapped model computes the same function), then both
models train with the same seed and the script prints their accuracies and epoch times.
The data set comes from $FASTALIGN_DATA or ../shared/datasets (copied to a temporary
folder, since PyG writes processed/ files); without it a synthetic graph is used.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import CHOICES, load  # noqa: E402

import fastalign.nn  # noqa: E402


class GCN(torch.nn.Module):
    """The two-layer GCN of Kipf & Welling, as PyG's examples write it."""

    def __init__(self, in_channels, hidden, out_channels):
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1 = GCNConv(in_channels, hidden, cached=True)
        self.conv2 = GCNConv(hidden, out_channels, cached=True)

    def forward(self, x, edge_index):
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu(self.conv1(x, edge_index))
        x = F.dropout(x, p=0.5, training=self.training)
        return self.conv2(x, edge_index)


def swap_gcnconv(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every PyG GCNConv of ``model`` by fastalign's (same options,
    same parameters). Returns the model."""
    from torch_geometric.nn import GCNConv as PyGGCNConv

    for name, child in list(model.named_children()):
        if isinstance(child, PyGGCNConv):
            setattr(model, name, fastalign.nn.GCNConv.from_pyg(child))
        else:
            swap_gcnconv(child)
    return model


def train(model, data, epochs, seed):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    best_val, test_at_best, times = 0.0, 0.0, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            pred = model(data.x, data.edge_index).argmax(1)
        val = (pred[data.val_mask] == data.y[data.val_mask]).float().mean().item()
        test = (pred[data.test_mask] == data.y[data.test_mask]).float().mean().item()
        if val >= best_val:
            best_val, test_at_best = val, test
    times.sort()
    return best_val, test_at_best, times[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="datasets folder (default: $FASTALIGN_DATA or ../shared/datasets)")
    parser.add_argument("--dataset", default="auto", choices=CHOICES,
                        help="a Planetoid data set, synthetic, or auto (Cora when found, else synthetic)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data, source = load(args.dataset, args.root)
    num_classes = int(data.y.max()) + 1
    print(f"data: {source}: {data.x.size(0)} nodes, {data.edge_index.size(1)} edges")

    torch.manual_seed(args.seed)
    pyg_model = GCN(data.x.size(1), args.hidden, num_classes)
    ours = swap_gcnconv(copy.deepcopy(pyg_model))
    print("swapped:", [type(m).__module__ + "." + type(m).__name__ for m in (ours.conv1, ours.conv2)])

    pyg_model.eval(), ours.eval()
    with torch.no_grad():
        diff = (pyg_model(data.x, data.edge_index) - ours(data.x, data.edge_index)).abs().max().item()
    print(f"same function before training: max |PyG - fastalign| = {diff:.2e}")

    for label, model in (("PyG GCNConv", pyg_model), ("fastalign GCNConv", ours)):
        val, test, epoch_s = train(model, data, args.epochs, args.seed)
        print(f"{label:18s} best val acc {val:.3f}, test acc there {test:.3f}, "
              f"median train step {epoch_s * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
