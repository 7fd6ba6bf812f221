"""StructureAlignLoss and FeatureAlignLoss in your own training loop.

    python examples/align_loss.py [--root DATASETS] [--dataset auto|synthetic|Cora|CiteSeer|PubMed] [--epochs 100]

Two GCN students of different widths learn together (online distillation, no teacher):
each step updates one student with its cross-entropy plus

* ``StructureAlignLoss``: KL between the peer's and the student's neighbour
  distributions of the hidden layer (only per-edge similarities are compared, so the
  widths may differ), the peer's embeddings detached;
* ``FeatureAlignLoss``: the student's hidden features, through a learnable linear
  adapter to the peer's width, pulled towards the peer's (MSE, the hint loss).

The core of it::

    struct = StructureAlignLoss(kernel="l1", tau=1.0)
    feat = FeatureAlignLoss(in_student=16, in_peer=32)        # has an adapter to train
    opt = torch.optim.Adam([*student.parameters(), *feat.parameters()], lr=0.01)
    h_s, out = student(x, graph)
    with torch.no_grad():
        h_p, _ = peer(x, graph)
    loss = F.cross_entropy(out[train], y[train]) + 1.0 * struct(graph, h_s, h_p) + 0.5 * feat(h_s, h_p)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import CHOICES, dataset_name, load  # noqa: E402

from fastalign import Graph  # noqa: E402
from fastalign.nn import FeatureAlignLoss, GCNConv, StructureAlignLoss  # noqa: E402


class Student(torch.nn.Module):
    def __init__(self, in_channels, hidden, out_channels):
        super().__init__()
        self.conv1 = GCNConv(in_channels, hidden, cached=True)
        self.conv2 = GCNConv(hidden, out_channels, cached=True)

    def forward(self, x, graph):
        x = F.dropout(x, p=0.5, training=self.training)
        h = F.relu(self.conv1(x, graph))
        out = self.conv2(F.dropout(h, p=0.5, training=self.training), graph)
        return h, out


def accuracy(model, data, graph, mask):
    model.eval()
    with torch.no_grad():
        pred = model(data.x, graph)[1].argmax(1)
    return (pred[mask] == data.y[mask]).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--dataset", default="auto", type=dataset_name, choices=CHOICES,
                        help="a Planetoid data set, synthetic, or auto (Cora when found, else synthetic)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--struct-weight", type=float, default=1.0)
    parser.add_argument("--feat-weight", type=float, default=0.5)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data, source = load(args.dataset, args.root)
    print(f"data: {source}")
    graph = Graph.from_edge_index(data.edge_index, num_nodes=data.x.size(0))  # built once
    num_classes = int(data.y.max()) + 1
    widths = (16, 32)
    students = [Student(data.x.size(1), w, num_classes) for w in widths]
    struct = StructureAlignLoss(kernel="l1", tau=1.0)
    feats = [FeatureAlignLoss(widths[k], widths[1 - k]) for k in range(2)]
    opts = [torch.optim.Adam([*s.parameters(), *f.parameters()], lr=0.01, weight_decay=5e-4)
            for s, f in zip(students, feats)]

    for epoch in range(1, args.epochs + 1):
        for k in range(2):  # alternate: update one student, the other is the detached peer
            student, peer = students[k], students[1 - k]
            with torch.no_grad():
                peer.eval()
                h_peer, _ = peer(data.x, graph)
            student.train()
            opts[k].zero_grad()
            h, out = student(data.x, graph)
            ce = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
            s_loss = struct(graph, h, h_peer)
            f_loss = feats[k](h, h_peer)
            (ce + args.struct_weight * s_loss + args.feat_weight * f_loss).backward()
            opts[k].step()
        if epoch % 20 == 0 or epoch == args.epochs:
            accs = [accuracy(s, data, graph, data.test_mask) for s in students]
            print(f"epoch {epoch:3d}: ce {ce.item():.3f}, structure {s_loss.item():.4f}, "
                  f"feature {f_loss.item():.3f}, test acc {accs[0]:.3f} / {accs[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
