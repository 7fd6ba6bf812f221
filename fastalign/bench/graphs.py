"""Benchmark graphs: the generated power-law graphs of docs/design.md and the Planetoid citation
graphs (structure only, read straight from the raw ``ind.<name>.graph`` files, so that
PubMed's graph is usable although its feature file is missing from the shared data).

This module holds the canonical generator; ``tests/graphs.py`` imports it from here.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import settings

DATA_ENV = settings.DATA


def power_law_edge_index(
    num_nodes: int, num_edges: int, *, seed: int = 0, exponent: float = 1.6, device=None
) -> Tensor:
    """The benchmark graphs of docs/design.md: ``dst = perm[floor(u^1.6 N)]`` with ``u`` uniform in
    [0, 1) and ``perm`` a random permutation of the nodes (heavy-tailed in-degree, hubs
    spread over the id range), ``src`` uniform in [0, N), self loops dropped (so slightly
    fewer than ``num_edges`` edges remain), seeded. Returns a ``[2, E]`` int64 edge_index
    on ``device`` (default CPU). The random draws and the float arithmetic always run on
    the CPU with a torch.Generator, so the graph is identical on every machine and
    device; with a device, the gathers, the self-loop mask and the stack run there (on
    a products-sized graph they are most of the CPU time)."""
    if num_nodes <= 0 or num_edges < 0:
        raise ValueError(f"need num_nodes > 0 and num_edges >= 0, got {num_nodes}, {num_edges}")
    device = torch.device("cpu" if device is None else device)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_nodes, generator=gen).to(device)
    u = torch.rand(num_edges, generator=gen, dtype=torch.float64)
    pos = (u.pow(exponent) * num_nodes).long().clamp(max=num_nodes - 1)
    del u
    dst = perm[pos.to(device)]
    del pos
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen).to(device)
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


# ---------------------------------------------------------------------- data root
def default_data_root() -> Path:
    """The data sets' rule (:func:`fastalign.datasets.default_root`): ``$FASTALIGN_DATA``,
    else ``~/.cache/fastalign/datasets``."""
    from ..datasets import default_root

    return Path(default_root())


PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}


def planetoid_graph_file(name: str, root) -> Path:
    name = name.lower()
    if name not in PLANETOID:
        raise ValueError(f"unknown Planetoid graph {name!r}; choose one of {sorted(PLANETOID)}")
    return Path(root) / PLANETOID[name] / "raw" / f"ind.{name}.graph"


def planetoid_edge_index(name: str, root=None) -> Tuple[Tensor, int]:
    """(edge_index, num_nodes) of a Planetoid graph, as PyG builds it
    (``edge_index_from_dict``: self loops removed, duplicates merged, sorted), read from
    ``<root>/<Name>/raw/ind.<name>.graph`` (read only: nothing is written next to it).
    Counts: Cora 2708 nodes / 10556 edges, CiteSeer 3327 / 9104, PubMed 19717 / 88648."""
    root = default_data_root() if root is None else Path(root)
    path = planetoid_graph_file(name, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (pass root= or set ${DATA_ENV} to the folder holding "
                                "Cora/, CiteSeer/, PubMed/)")
    with open(path, "rb") as f:
        adjacency = pickle.load(f, encoding="latin1")
    rows: List[int] = []
    cols: List[int] = []
    for node, neighbours in adjacency.items():
        rows.extend([node] * len(neighbours))
        cols.extend(neighbours)
    row, col = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    num_nodes = max(len(adjacency), int(row.max()) + 1, int(col.max()) + 1)
    if name.lower() == "citeseer":
        # PyG pads CiteSeer's test range with isolated nodes: 3327 in all.
        num_nodes = max(num_nodes, 3327)
    keep = row != col
    key = torch.unique(row[keep] * num_nodes + col[keep])  # sorted, duplicates merged
    # Edge j -> i for each neighbour j of i, sorted by target then source, as PyG's data.
    return torch.stack([key % num_nodes, key // num_nodes]), num_nodes


# ---------------------------------------------------------------------- the graph list
@dataclass
class GraphSpec:
    """A benchmark graph: its name, size and how to build its edge_index."""

    name: str
    num_nodes: int
    num_edges: int  # before self-loop removal for generated graphs
    kind: str  # "planetoid", "power-law" or "block-model"
    load: Callable[[], Tuple[Tensor, int]] = field(repr=False)
    note: str = ""
    width: int = 0  # the data set's own feature width (0: none, a generated graph)
    root: Optional[Path] = None  # planetoid: the data root (None: default_data_root())

    def available(self) -> Tuple[bool, str]:
        if self.kind == "planetoid":
            root = self.root if self.root is not None else default_data_root()
            if not root.is_dir():
                return False, f"no data root {root} (pass --root or set ${DATA_ENV})"
            path = planetoid_graph_file(self.name, root)
            if not path.is_file():
                return False, f"{path} not found"
        return True, ""


def _power_law_spec(name, n, e, note=""):
    return GraphSpec(name, n, e, "power-law", lambda: (power_law_edge_index(n, e, seed=0), n), note)


PLANETOID_WIDTHS = {"cora": 1433, "citeseer": 3703, "pubmed": 500}


def _planetoid_spec(name, n, e, root=None):
    return GraphSpec(name, n, e, "planetoid", lambda: planetoid_edge_index(name, root),
                     width=PLANETOID_WIDTHS[name], root=Path(root) if root is not None else None)


def graph_specs(sizes: str = "small", root=None) -> List[GraphSpec]:
    """The graphs of a size class:

    * ``tiny`` (for tests): one generated graph of 400 nodes, 3,000 edges.
    * ``small``: Cora, CiteSeer, PubMed's graph, power-law 10k nodes / 100k edges and
      the CPU size of docs/design.md, 100k nodes / 1M edges.
    * ``large``: ``small`` plus the arxiv-, reddit- and products-like power-law graphs of
      docs/design.md (GPU sizes; each contender runs where memory allows).
    * ``scaling``: power-law graphs of 10^4 to 10^8 edges at mean degree 10 and 50
      (:mod:`fastalign.bench.scaling`), smallest first.
    """
    if sizes == "tiny":
        return [_power_law_spec("powerlaw-tiny", 400, 3_000)]
    if sizes == "scaling":
        return scaling_specs()
    specs = [
        _planetoid_spec("cora", 2_708, 10_556, root),
        _planetoid_spec("citeseer", 3_327, 9_104, root),
        _planetoid_spec("pubmed", 19_717, 88_648, root),
        _power_law_spec("powerlaw-10k", 10_000, 100_000),
        _power_law_spec("powerlaw-100k", 100_000, 1_000_000, "the CPU size of docs/design.md"),
    ]
    if sizes == "small":
        return specs
    if sizes == "large":
        return specs + [
            _power_law_spec("arxiv-like", 169_343, 2_332_486),
            _power_law_spec("reddit-like", 232_965, 114_615_892, "hubs of degree ~50k"),
            _power_law_spec("products-like", 2_449_029, 123_718_280),
        ]
    raise ValueError(f"sizes must be 'tiny', 'small', 'large' or 'scaling', got {sizes!r}")


# ---------------------------------------------------------------------- the scaling sweep
# mean degrees and edge counts of the sweep
DEGREES = (10, 50)
EDGE_COUNTS = (10**4, 10**5, 10**6, 10**7, 10**8)
CHUNK_EDGES = 1 << 22  # edges generated per chunk (the largest temporaries: 64 MiB of floats)


def chunked_power_law_edge_index(num_nodes: int, num_edges: int, *, seed: int = 0,
                                 exponent: float = 1.6) -> Tensor:
    """A power-law ``[2, E']`` int64 edge_index (the destination law of
    :func:`fastalign.bench.graphs.power_law_edge_index`: ``dst = perm[floor(u^exponent N)]``,
    ``src`` uniform, self loops dropped), drawn in chunks of :data:`CHUNK_EDGES` edges
    straight into the output: its peak is the edge list plus one chunk's temporaries.
    Seeded and the same on every machine (not the same draws as the one-shot generator)."""
    if num_nodes <= 1 or num_edges < 0:
        raise ValueError(f"need num_nodes > 1 and num_edges >= 0, got {num_nodes}, {num_edges}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_nodes, generator=gen)

    def draw(m):
        u = torch.rand(m, generator=gen, dtype=torch.float64)
        dst = perm[(u.pow_(exponent).mul_(num_nodes)).long().clamp_(max=num_nodes - 1)]
        del u
        return torch.randint(0, num_nodes, (m,), generator=gen), dst

    return _chunked_edges(num_edges, draw)


def _chunked_edges(num_edges: int, draw) -> Tensor:
    """``[2, E']``: ``draw(m)`` gives ``(src, dst)`` for each chunk of up to
    :data:`CHUNK_EDGES` edges, written straight into one preallocated edge list, self loops
    dropped; the peak is the edge list plus one chunk's temporaries."""
    out = torch.empty(2, num_edges, dtype=torch.int64)
    kept = 0
    for start in range(0, num_edges, CHUNK_EDGES):
        src, dst = draw(min(CHUNK_EDGES, num_edges - start))
        keep = src != dst
        k = int(keep.sum())
        out[0, kept:kept + k] = src[keep]
        out[1, kept:kept + k] = dst[keep]
        kept += k
    return out[:, :kept]


COMMUNITY = 100  # nodes per community of the sweep's block model
HOMOPHILY = 0.9  # the share of each node's edges inside its community


def chunked_block_edge_index(num_nodes: int, num_edges: int, *, community: int = COMMUNITY,
                             homophily: float = HOMOPHILY, seed: int = 0) -> Tensor:
    """A block-model ``[2, E']`` int64 edge_index numbered at random, as data sets often
    are: communities of ``community`` nodes (the nodes ``perm[c * community:(c + 1) *
    community]``), each edge from a uniform source to a uniform member of the source's
    community with probability ``homophily``, else to a uniform node; self loops dropped.
    Drawn in chunks of :data:`CHUNK_EDGES` edges straight into the output, like
    :func:`chunked_power_law_edge_index`. The order by community (the best a reordering
    could find) is ``torch.randperm(num_nodes)`` under a generator seeded with ``seed``."""
    if num_nodes <= 1 or num_edges < 0 or community < 1 or not 0 <= homophily <= 1:
        raise ValueError(f"need num_nodes > 1, num_edges >= 0, community >= 1 and 0 <= homophily <= 1, "
                         f"got {num_nodes}, {num_edges}, {community}, {homophily}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_nodes, generator=gen)
    position = torch.empty_like(perm)
    position[perm] = torch.arange(num_nodes)

    def draw(m):
        src = torch.randint(0, num_nodes, (m,), generator=gen)
        first = position[src].div_(community, rounding_mode="floor").mul_(community)  # the community's start
        size = (num_nodes - first).clamp_(max=community)  # the last community may be smaller
        inside = perm[first.add_((torch.rand(m, generator=gen, dtype=torch.float64) * size).long())]
        anywhere = torch.randint(0, num_nodes, (m,), generator=gen)
        return src, torch.where(torch.rand(m, generator=gen) < homophily, inside, anywhere)

    return _chunked_edges(num_edges, draw)


def scaling_specs(degrees: Sequence[int] = DEGREES, edge_counts: Sequence[int] = EDGE_COUNTS) -> List["GraphSpec"]:
    """The graphs of ``--sizes scaling`` (:mod:`fastalign.bench.scaling`), smallest first
    within each mean degree: power-law graphs ``scale-d{degree}-e{log10 E}``, then block
    models ``blocks-d{degree}-e{log10 E}`` (:func:`chunked_block_edge_index`)."""
    specs = []
    for kind, prefix, make, note in (
            ("power-law", "scale", chunked_power_law_edge_index, "power law"),
            ("block-model", "blocks", chunked_block_edge_index,
             f"block model, communities of {COMMUNITY}, {HOMOPHILY:.0%} of edges inside, numbered at random")):
        for degree in degrees:
            for e in edge_counts:
                n = max(e // degree, 2)
                exp = int(round(math.log10(e)))
                name = f"{prefix}-d{degree}-e{exp}" if 10**exp == e else f"{prefix}-d{degree}-{e}"
                specs.append(GraphSpec(name, n, e, kind, lambda n=n, e=e, make=make: (make(n, e, seed=0), n),
                                       f"{note}, mean degree {degree}"))
    return specs
