"""Convert a stock PyG model to fastalign's layers in one line and train both.

    python examples/pyg_swap.py [--model gcn|sage|gin|gat] [--root DATASETS]
        [--dataset auto|synthetic|Cora|CiteSeer|PubMed] [--epochs 200]

The model is PyG's own (``torch_geometric.nn.models.GCN``, ``GraphSAGE``, ``GIN`` or ``GAT``).
``fastalign.nn.convert`` replaces each of its convs with fastalign's layer carrying the
same options and parameters (so the converted model computes the same function), then
both models train with the same seed and the script prints their accuracies and
training-step times.
The data set comes from --root, $FASTALIGN_DATA or ~/.cache/fastalign/datasets (copied to a temporary
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
from _data import CHOICES, dataset_name, load  # noqa: E402

import fastalign.nn  # noqa: E402


def stock_model(kind: str, in_channels: int, hidden: int, out_channels: int) -> torch.nn.Module:
    """A stock PyG model (torch_geometric.nn.models), two layers."""
    from torch_geometric.nn import models

    cls = {"gcn": models.GCN, "sage": models.GraphSAGE, "gin": models.GIN, "gat": models.GAT}[kind]
    return cls(in_channels, hidden, num_layers=2, out_channels=out_channels, dropout=0.5)


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
    parser.add_argument("--root", default=None, help="datasets folder (default: $FASTALIGN_DATA, else ~/.cache/fastalign/datasets)")
    parser.add_argument("--dataset", default="auto", type=dataset_name, choices=CHOICES,
                        help="a Planetoid data set, synthetic, or auto (Cora when found, else synthetic)")
    parser.add_argument("--model", default="gcn", choices=("gcn", "sage", "gin", "gat"))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data, source = load(args.dataset, args.root)
    num_classes = int(data.y.max()) + 1
    print(f"data: {source}: {data.x.size(0)} nodes, {data.edge_index.size(1)} edges")

    torch.manual_seed(args.seed)
    pyg_model = stock_model(args.model, data.x.size(1), args.hidden, num_classes)
    ours = fastalign.nn.convert(copy.deepcopy(pyg_model))  # the one line
    print("converted:", [type(m).__module__ + "." + type(m).__name__ for m in ours.convs])

    pyg_model.eval(), ours.eval()
    with torch.no_grad():
        expected = pyg_model(data.x, data.edge_index)
        diff = (expected - ours(data.x, data.edge_index)).abs().max().item()
        scale = max(expected.abs().max().item(), 1e-30)
    print(f"same function before training: max |PyG - fastalign| = {diff:.2e} "
          f"(relative to the largest output: {diff / scale:.1e})")

    conv = type(ours.convs[0]).__name__
    for label, model in ((f"PyG {conv}", pyg_model), (f"fastalign {conv}", ours)):
        val, test, epoch_s = train(model, data, args.epochs, args.seed)
        print(f"{label:18s} best val acc {val:.3f}, test acc there {test:.3f}, "
              f"median train step {epoch_s * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
