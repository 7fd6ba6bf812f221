"""Alignahead++ for your own PyG models: two torch_geometric GAT models distil each other.

    python examples/alignahead_pyg.py [--root DATASETS] [--dataset auto|synthetic|Cora|...]
        [--mode simultaneous|alternating] [--epochs 200]

``fastalign.distill.Alignahead`` hooks the models' message-passing layers and returns the
distillation terms (structure, feature hints, deep supervision) from their last
forwards; the task loss, the optimiser and the loop stay the user's. The script prints
each model's test accuracy at its best validation epoch, and the same two models trained
independently from the same initial weights.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import CHOICES, dataset_name, load  # noqa: E402

from fastalign.distill import Alignahead  # noqa: E402


def accuracy(model, data, mask):
    model.eval()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(1)
    return (pred[mask] == data.y[mask]).float().mean().item()


def train(models, data, epochs, mode, distil):
    ei, y, train_mask = data.edge_index, data.y, data.train_mask
    align = Alignahead(models, num_classes=int(y.max()) + 1, sigma="auto") if distil else None
    params = [p for m in models for p in m.parameters()] + (list(align.parameters()) if align else [])
    opt = torch.optim.Adam(params, lr=0.005, weight_decay=5e-4)
    best = [(-1.0, 0.0)] * len(models)
    for _ in range(epochs):
        for m in models:
            m.train()
        if not distil or mode == "simultaneous":
            outs = [m(data.x, ei) for m in models]
            loss = sum(F.cross_entropy(o[train_mask], y[train_mask]) for o in outs)
            if align:
                loss = loss + align.loss(ei, y, train_mask)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:  # alternating: one student at a time, its peers' outputs as targets
            for k, model in enumerate(models):
                with torch.no_grad():
                    for j, peer in enumerate(models):
                        if j != k:
                            peer(data.x, ei)
                out = model(data.x, ei)
                loss = F.cross_entropy(out[train_mask], y[train_mask]) + align.loss(ei, y, train_mask, student=k)[0]
                opt.zero_grad()
                loss.backward()
                opt.step()
        # (the hooks also see these forwards; the next step's forwards replace what they saw)
        best = [max(b, (accuracy(m, data, data.val_mask), accuracy(m, data, data.test_mask)))
                for b, m in zip(best, models)]
    return [t for _, t in best]


def main(argv=None):
    from torch_geometric.nn.models import GAT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--dataset", default="auto", type=dataset_name, choices=CHOICES)
    parser.add_argument("--mode", default="simultaneous", choices=("simultaneous", "alternating"))
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args(argv)
    data, source = load(args.dataset, args.root)
    print(f"data: {source}")
    torch.manual_seed(0)
    classes = int(data.y.max()) + 1
    models = [GAT(data.x.size(1), 64, 2, classes, heads=8, dropout=0.6) for _ in range(2)]
    independent = copy.deepcopy(models)
    distilled = train(models, data, args.epochs, args.mode, distil=True)
    alone = train(independent, data, args.epochs, args.mode, distil=False)
    for k in range(2):
        print(f"GAT {k}: test acc {distilled[k]:.4f} distilled ({args.mode}), {alone[k]:.4f} trained alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
