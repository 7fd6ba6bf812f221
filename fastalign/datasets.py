"""Node-classification data sets that load offline from a root folder.

``load_dataset(name, root=None, seed=0)`` returns a :class:`NodeDataset`:

* ``synthetic`` (the default of the CLI): a contextual stochastic block model generated
  from the seed -- no files, so the trainer runs anywhere.
* ``cora``, ``citeseer``, ``pubmed``: the Planetoid public split, read by PyG's
  ``Planetoid`` (the ``pyg`` extra) from ``<root>/<Name>/raw/ind.<name>.*`` (``Cora``,
  ``CiteSeer``, ``PubMed``). PyG writes ``processed/`` next to ``raw/``; a folder without
  write bits is never written into (the raw files are read through a temporary copy,
  removed after loading). Missing raw files are an error unless ``download=True``.
  Features are row-normalised (as in Kipf & Welling).
* ``ppi``: the inductive protein-protein-interaction set (GraphSAGE version, PyG layout
  ``<root>/PPI/raw/{train,valid,test}_{graph.json,feats.npy,labels.npy,graph_id.npy}``;
  ``<root>/raw/...`` is accepted too): one graph per tissue, 121 binary labels
  (multi-label, scored by micro-F1), trained in mini-batches of graphs. Read directly
  (json + numpy), exactly as PyG's ``PPI.process`` does, without networkx.

The root comes from the ``root`` argument, else the ``FASTALIGN_DATA`` environment
variable, else ``~/.cache/fastalign/datasets``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from . import settings
from .graph import Graph
from .sparse_features import SparseFeatures

ENV_VAR = settings.DATA


class DatasetError(ValueError):
    """A data set's files are there but cannot be used: truncated, garbled, or not
    matching each other. The message names the file and the problem in one line."""
PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
DATASETS = ("synthetic",) + tuple(PLANETOID) + ("ppi",)
SPLITS = ("train", "val", "test")


@dataclass
class GraphBatch:
    """One graph (or a block-diagonal batch of graphs) with features and labels.

    ``masks`` maps a split name to a boolean node mask; for an inductive batch every
    node of the batch belongs to its one split.
    """

    x: Tensor
    y: Tensor
    edge_index: Tensor
    masks: Dict[str, Tensor]
    graph: Graph = field(init=False)

    def __post_init__(self):
        self.graph = Graph.from_edge_index(self.edge_index, num_nodes=self.x.size(0))

    @property
    def num_nodes(self) -> int:
        return self.x.size(0)

    @property
    def x_input(self):
        """The features as the students take them: :class:`SparseFeatures` when under 10%
        of the entries are non-zero (bag-of-words inputs), else the dense tensor."""
        if "_x_input" not in self.__dict__:
            dense = self.x.numel() == 0 or (self.x != 0).float().mean().item() >= 0.1
            self._x_input = self.x if dense else SparseFeatures.from_dense(self.x)
        return self._x_input

    def to(self, device) -> "GraphBatch":
        out = GraphBatch.__new__(GraphBatch)
        out.x, out.y = self.x.to(device), self.y.to(device)
        out.edge_index = self.edge_index.to(device)
        out.masks = {k: m.to(device) for k, m in self.masks.items()}
        out.graph = self.graph.to(device)
        if "_x_input" in self.__dict__:  # the sparse input moves along instead of being rebuilt
            out._x_input = self._x_input.to(device)
        return out


@dataclass
class NodeDataset:
    """A transductive data set (one graph, split by node masks) or an inductive one
    (separate lists of graphs per split)."""

    name: str
    num_features: int
    num_classes: int
    multilabel: bool
    transductive: Optional[GraphBatch] = None
    graphs: Dict[str, List[GraphBatch]] = field(default_factory=dict)

    @property
    def inductive(self) -> bool:
        return self.transductive is None

    @property
    def metric(self) -> str:
        return "micro_f1" if self.multilabel else "accuracy"

    def train_batches(self, batch_size: int = 1, generator: Optional[torch.Generator] = None,
                      num_parts: int = 1):
        """The batches of one training epoch: when transductive, the whole graph, or with
        ``num_parts`` > 1 the subgraphs induced by a fresh random partition of the nodes
        into that many parts (PyG's RandomNodeLoader: each part keeps the edges between
        its own nodes, about 1/num_parts of every node's neighbours); when inductive,
        shuffled mini-batches of ``batch_size`` training graphs."""
        if not self.inductive:
            if num_parts > 1:
                return random_node_parts(self.transductive, num_parts, generator)
            return [self.transductive]
        graphs = self.graphs["train"]
        order = torch.randperm(len(graphs), generator=generator).tolist()
        return [
            merge_graphs([graphs[i] for i in order[s : s + batch_size]], "train")
            for s in range(0, len(order), batch_size)
        ]

    def eval_batches(self, batch_size: int = 2) -> List[GraphBatch]:
        """Batches whose masks cover the validation and test nodes (and train, when
        transductive)."""
        if not self.inductive:
            return [self.transductive]
        out = []
        for split in ("val", "test"):
            graphs = self.graphs[split]
            out += [merge_graphs(graphs[s : s + batch_size], split) for s in range(0, len(graphs), batch_size)]
        return out

    def to(self, device) -> "NodeDataset":
        self.transductive = self.transductive.to(device) if self.transductive is not None else None
        self.graphs = {k: [g.to(device) for g in v] for k, v in self.graphs.items()}
        return self


def merge_graphs(graphs: List[GraphBatch], split: str) -> GraphBatch:
    """A block-diagonal batch of graphs, every node in ``split``."""
    if len(graphs) == 1 and list(graphs[0].masks) == [split]:
        return graphs[0]
    xs, ys, edges, offset = [], [], [], 0
    for g in graphs:
        xs.append(g.x)
        ys.append(g.y)
        edges.append(g.edge_index + offset)
        offset += g.num_nodes
    x = torch.cat(xs)
    return GraphBatch(
        x, torch.cat(ys), torch.cat(edges, 1), {split: torch.ones(x.size(0), dtype=torch.bool)}
    )


# --------------------------------------------------------------------------- public API
def default_root() -> str:
    return settings.data_root() or os.path.join(os.path.expanduser("~"), ".cache", "fastalign", "datasets")


def load_dataset(name: str, root: Optional[str] = None, seed: int = 0, download: bool = False,
                 **kwargs) -> NodeDataset:
    """Load a data set by name (``synthetic``, ``cora``, ``citeseer``, ``pubmed``, ``ppi``).

    ``download=True`` lets PyG fetch missing Planetoid files (never done otherwise);
    ``kwargs`` go to the specific loader (e.g. ``num_nodes`` for synthetic).
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if key == "synthetic":
        return synthetic_csbm(seed=seed, **kwargs)
    root = root or default_root()
    if key == "ppi":
        if download:
            raise ValueError("PPI is read from its raw files (PyG's layout); fastalign does not download it")
        return load_ppi(root, **kwargs)
    return load_planetoid(root, key, download=download, **kwargs)


# --------------------------------------------------------------------------- synthetic
DENSE_CSBM_NODES = 20_000  # above: edges drawn one by one (an N x N mask would not fit)


def _sparse_block_edges(y: Tensor, num_classes: int, avg_degree: float, homophily: float,
                        g: torch.Generator):
    """Undirected block-model edges (src < dst, unique), drawn in O(E)."""
    n = y.numel()
    m = int(round(n * avg_degree / 2))
    members = torch.argsort(y, stable=True)  # the nodes of class c at [start[c], start[c+1])
    counts = torch.bincount(y, minlength=num_classes)
    start = torch.cumsum(counts, 0) - counts
    src = torch.randint(0, n, (m,), generator=g)
    same = torch.rand(m, generator=g) < homophily
    c = y[src]
    # in-block: a uniform member of c; across: a uniform node of the other blocks
    u = torch.rand(m, generator=g, dtype=torch.float64)
    within = start[c] + (u * counts[c]).long().clamp(max=counts[c] - 1)
    others = n - counts[c]
    k = (u * others).long().clamp(max=others - 1)  # the k-th node outside block c
    across = torch.where(k < start[c], k, k + counts[c])
    dst = members[torch.where(same, within, across)]
    lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
    keep = lo != hi
    pairs = torch.unique(lo[keep] * n + hi[keep])
    return pairs // n, pairs % n


def synthetic_csbm(
    num_nodes: int = 600,
    num_classes: int = 4,
    num_features: int = 32,
    avg_degree: float = 8.0,
    homophily: float = 0.8,
    feature_snr: float = 0.6,
    train_per_class: int = 20,
    num_val: int = 100,
    seed: int = 0,
) -> NodeDataset:
    """A contextual stochastic block model: ``num_classes`` blocks of equal size, an
    expected in-block share ``homophily`` of each node's ``avg_degree`` undirected edges,
    and Gaussian features ``mu_c * feature_snr + N(0, I)`` with random unit class means.
    Split: ``train_per_class`` nodes per class, ``num_val`` validation, the rest test.
    Everything is drawn from a ``torch.Generator`` seeded with ``seed``.

    Up to ``DENSE_CSBM_NODES`` nodes every pair is an independent Bernoulli draw (an
    N x N mask); above, the same expected degrees are drawn edge by edge in O(E) memory
    (``N * avg_degree / 2`` undirected edges, each from a uniform node to a uniform node
    of its block with probability ``homophily``, else to a uniform node of another
    block; duplicates and self loops are dropped), so graphs of millions of nodes fit."""
    for arg, v in (("num_nodes", num_nodes), ("num_classes", num_classes), ("num_features", num_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    if not 0.0 <= homophily <= 1.0:
        raise ValueError(f"homophily must be in [0, 1], got {homophily}")
    need = num_classes * train_per_class + num_val
    if need >= num_nodes:
        raise ValueError(
            f"num_nodes must be at least {need + 1} for this split ({num_classes} classes x {train_per_class} "
            f"training nodes + {num_val} validation nodes + at least one test node), got {num_nodes}")
    g = torch.Generator().manual_seed(int(seed))
    y = torch.arange(num_nodes) % num_classes
    y = y[torch.randperm(num_nodes, generator=g)]
    if num_nodes <= DENSE_CSBM_NODES:
        n_in = num_nodes / num_classes
        p_in = avg_degree * homophily / max(n_in - 1, 1)
        p_out = avg_degree * (1 - homophily) / max(num_nodes - n_in, 1)
        upper = torch.triu(torch.ones(num_nodes, num_nodes, dtype=torch.bool), diagonal=1)
        same = y.unsqueeze(0) == y.unsqueeze(1)
        prob = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
        adj = (torch.rand(num_nodes, num_nodes, generator=g) < prob) & upper
        src, dst = adj.nonzero(as_tuple=True)
    else:
        src, dst = _sparse_block_edges(y, num_classes, avg_degree, homophily, g)
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    means = torch.randn(num_classes, num_features, generator=g)
    means = means / means.norm(dim=1, keepdim=True) * feature_snr * num_features**0.5 / 2
    x = means[y] + torch.randn(num_nodes, num_features, generator=g)
    order = torch.randperm(num_nodes, generator=g)
    train = torch.zeros(num_nodes, dtype=torch.bool)
    for c in range(num_classes):
        train[order[y[order] == c][:train_per_class]] = True
    rest = order[~train[order]]
    val = torch.zeros(num_nodes, dtype=torch.bool)
    val[rest[:num_val]] = True
    test = ~(train | val)
    batch = GraphBatch(x, y, edge_index, {"train": train, "val": val, "test": test})
    return NodeDataset("synthetic", num_features, num_classes, False, transductive=batch)


def random_node_parts(batch: GraphBatch, num_parts: int, generator: Optional[torch.Generator] = None
                      ) -> List[GraphBatch]:
    """``batch`` cut into the subgraphs induced by a random partition of its nodes into
    ``num_parts`` parts of (nearly) equal size, node ids renumbered within each part."""
    n = batch.x.size(0)
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise ValueError(f"num_parts must be a positive int, got {num_parts!r}")
    device = batch.x.device
    part = torch.empty(n, dtype=torch.long)
    part[torch.randperm(n, generator=generator)] = torch.arange(n) % num_parts
    part = part.to(device)
    src, dst = batch.edge_index
    inside = batch.edge_index[:, part[src] == part[dst]]
    # nodes and kept edges grouped by part once (stable: the original order within a part)
    node_order = torch.argsort(part, stable=True)
    node_counts = torch.bincount(part, minlength=num_parts).tolist()
    edge_part = part[inside[0]]
    edges = inside[:, torch.argsort(edge_part, stable=True)]
    edge_counts = torch.bincount(edge_part, minlength=num_parts).tolist()
    local = torch.empty(n, dtype=torch.long, device=device)
    out = []
    for nodes, ei in zip(torch.split(node_order, node_counts), torch.split(edges, edge_counts, dim=1)):
        local[nodes] = torch.arange(nodes.numel(), device=device)
        out.append(GraphBatch(batch.x[nodes], batch.y[nodes], local[ei],
                              {k: m[nodes] for k, m in batch.masks.items()}))
    return out


# --------------------------------------------------------------------------- Planetoid
PLANETOID_RAW = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def _writable(path: str) -> bool:
    """Whether PyG may write into ``path``: it exists, carries write bits and the process
    may write it. ``os.access`` alone says yes to root for a read-only folder; the mode
    bits do not, and a folder someone made read-only is not written into by anyone."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(path, os.W_OK)


def _missing_raw_files(raw: str, key: str) -> List[str]:
    return [f"ind.{key}.{part}" for part in PLANETOID_RAW if not os.path.isfile(os.path.join(raw, f"ind.{key}.{part}"))]


def load_planetoid(root: str, name: str, normalize_features: bool = True, download: bool = False) -> NodeDataset:
    """Cora / CiteSeer / PubMed with the public Planetoid split, via PyG's Planetoid
    (needs the ``pyg`` extra: ``pip install "fastalign[pyg]"``).

    Reads ``<root>/<Name>/raw/ind.<name>.*``. PyG writes ``processed/`` beside ``raw/``:
    where the folder may not be written (no write bits, for root too), the raw files are
    copied to a temporary folder that is removed once the data set is in memory. Missing
    raw files are an error unless ``download=True``, which lets PyG fetch them (network
    needed) into ``root`` (it must be writable then).
    """
    key = name.lower()
    if key not in PLANETOID:
        raise ValueError(f"not a Planetoid data set: {name!r}; choose one of {tuple(PLANETOID)}")
    folder = PLANETOID[key]
    try:
        from torch_geometric.datasets import Planetoid
    except ImportError as exc:
        raise ImportError(
            f"loading {folder} needs torch_geometric: pip install torch_geometric "
            '(or install fastalign with the pyg extra: pip install --no-build-isolation "fastalign[pyg]")'
        ) from exc
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"the data root {root!r} does not exist: pass --root (or root=) or set ${ENV_VAR} to the folder "
            f"that holds {folder}/raw/"
        )
    target = os.path.join(root, folder)
    raw = os.path.join(target, "raw")
    missing = _missing_raw_files(raw, key)
    if missing and not download:
        raise FileNotFoundError(
            f"{folder} is not under {root!r}: {raw} lacks {', '.join(missing)}. Put PyG's raw Planetoid "
            "files there, or pass --download (download=True) to fetch them"
        )
    if missing:  # download=True: PyG fetches into root, which must then be writable
        if not _writable(root) or (os.path.isdir(target) and not _writable(target)):
            raise PermissionError(f"cannot download {folder} into {root!r}: it is not writable")
        try:
            data = Planetoid(root, folder, split="public")[0]
        except Exception as exc:
            raise RuntimeError(f"could not download {folder} into {root!r}: {type(exc).__name__}: {exc}") from exc
        return _from_pyg(data, key, normalize_features)
    if _writable(target) and (not os.path.isdir(os.path.join(target, "processed"))
                              or _writable(os.path.join(target, "processed"))):
        return _from_pyg(_read_planetoid(Planetoid, root, folder, raw), key, normalize_features)
    with tempfile.TemporaryDirectory(prefix="fastalign-data-") as tmp:
        # copyfile, not copy2: the copies must not inherit read-only modes (or the
        # temporary folder could not be removed by a non-root user)
        shutil.copytree(raw, os.path.join(tmp, folder, "raw"), copy_function=shutil.copyfile)
        data = _read_planetoid(Planetoid, tmp, folder, raw)
    return _from_pyg(data, key, normalize_features)


def _read_planetoid(Planetoid, where: str, folder: str, raw: str):
    try:
        return Planetoid(where, folder, split="public")[0]
    except Exception as exc:
        _name_the_damaged_file(raw, folder.lower())
        raise DatasetError(f"could not read {folder} from {raw}: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _name_the_damaged_file(raw: str, key: str) -> None:
    """After PyG failed to read a Planetoid folder: read each raw file as PyG does and
    raise a DatasetError naming the first that does not load."""
    import pickle
    import sys

    for ext in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        path = os.path.join(raw, f"ind.{key}.{ext}")
        try:
            with open(path, "rb") as f:
                if sys.version_info > (3, 0):
                    pickle.load(f, encoding="latin1")
                else:  # pragma: no cover
                    pickle.load(f)
        except Exception as exc:
            raise DatasetError(f"{path}: damaged or not a Planetoid file "
                               f"({type(exc).__name__}: {_first_line(exc)})") from None
    path = os.path.join(raw, f"ind.{key}.test.index")
    try:
        with open(path) as f:
            [int(line) for line in f if line.strip()]
    except Exception as exc:
        raise DatasetError(f"{path}: damaged ({type(exc).__name__}: {_first_line(exc)})") from None


def _from_pyg(data, key: str, normalize_features: bool) -> NodeDataset:
    x = data.x.float()
    if normalize_features:
        x = x / x.sum(1, keepdim=True).clamp(min=1e-12)
    masks = {"train": data.train_mask, "val": data.val_mask, "test": data.test_mask}
    batch = GraphBatch(x, data.y, data.edge_index, masks)
    num_classes = int(data.y.max()) + 1
    return NodeDataset(key, x.size(1), num_classes, False, transductive=batch)


# --------------------------------------------------------------------------- PPI
PPI_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def _ppi_raw_dir(root: str) -> str:
    for cand in (os.path.join(root, "PPI", "raw"), os.path.join(root, "raw"), root):
        if os.path.isfile(os.path.join(cand, "train_graph.json")):
            return cand
    raise FileNotFoundError(
        f"PPI not found under {root!r}: expected PPI/raw/{{train,valid,test}}_"
        "{graph.json,feats.npy,labels.npy,graph_id.npy} (PyG's PPI layout)"
    )


def read_ppi_split(raw_dir: str, split: str) -> List[GraphBatch]:
    """One split of PPI as a list of graphs, as PyG's ``PPI.process`` builds them: the
    node-link json's links in both directions (an undirected graph), relabelled per
    graph id, self loops removed, duplicates merged."""
    prefix = os.path.join(raw_dir, PPI_SPLITS[split])

    def read(suffix, how):
        try:
            return how(prefix + suffix)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise DatasetError(f"{prefix}{suffix}: damaged ({type(exc).__name__}: {_first_line(exc)})") from None

    def read_json(path):
        with open(path) as f:
            return json.load(f)

    graph = read("_graph.json", read_json)
    x = torch.from_numpy(read("_feats.npy", np.load)).float()
    y = torch.from_numpy(read("_labels.npy", np.load)).float()
    graph_id = torch.from_numpy(read("_graph_id.npy", np.load)).long()
    for suffix, t in (("_labels.npy", y), ("_graph_id.npy", graph_id)):
        if t.size(0) != x.size(0):
            raise DatasetError(f"{prefix}{suffix} has {t.size(0)} rows but {prefix}_feats.npy has {x.size(0)} "
                               "(files from different versions of PPI?)")
    if x.dim() != 2 or y.dim() != 2 or graph_id.dim() != 1:
        raise DatasetError(f"{prefix}_*.npy: expected 2-D features and labels and 1-D graph ids, got shapes "
                           f"{list(x.shape)}, {list(y.shape)}, {list(graph_id.shape)}")
    # Node ids are the feature rows (PyG indexes x by the networkx node ids).
    try:
        links = [(int(l["source"]), int(l["target"])) for l in graph["links"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{prefix}_graph.json: not a node-link graph ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from None
    ei = torch.tensor(links, dtype=torch.long).t().reshape(2, -1)
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= x.size(0)):
        raise DatasetError(f"{prefix}_graph.json links refer to nodes outside the {x.size(0)} feature rows")
    if not graph.get("directed", False):
        ei = torch.cat([ei, ei.flip(0)], 1)
    out = []
    for gid in torch.unique(graph_id).tolist():
        mask = graph_id == gid
        nodes = mask.nonzero().flatten()
        local = torch.full((x.size(0),), -1, dtype=torch.long)
        local[nodes] = torch.arange(nodes.numel())
        keep = mask[ei[0]] & mask[ei[1]] & (ei[0] != ei[1])
        e = local[ei[:, keep]]
        e = torch.unique(e, dim=1) if e.numel() else e
        out.append(GraphBatch(x[nodes], y[nodes], e, {split: torch.ones(nodes.numel(), dtype=torch.bool)}))
    return out


def load_ppi(root: str) -> NodeDataset:
    raw = _ppi_raw_dir(root)
    graphs = {split: read_ppi_split(raw, split) for split in SPLITS}
    widths = {split: (gs[0].x.size(1), gs[0].y.size(1)) for split, gs in graphs.items() if gs}
    if len(set(widths.values())) > 1:
        raise DatasetError(f"PPI under {raw}: the splits' feature and label widths differ {widths}")
    first = graphs["train"][0]
    return NodeDataset("ppi", first.x.size(1), first.y.size(1), True, graphs=graphs)
