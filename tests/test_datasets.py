"""Data loaders: synthetic CSBM, Planetoid on the real files (when present), and PubMed /
PPI on small files written here in the real formats."""

import glob
import json
import os
import pickle
import tempfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fastalign.datasets import ENV_VAR, load_dataset, merge_graphs, synthetic_csbm


def _data_root():
    root = os.environ.get(ENV_VAR)
    return root if root and os.path.isdir(root) else None


# --------------------------------------------------------------------------- synthetic
def test_synthetic_is_seeded_and_well_formed():
    a, b, c = synthetic_csbm(seed=3), synthetic_csbm(seed=3), synthetic_csbm(seed=4)
    ta, tb, tc = a.transductive, b.transductive, c.transductive
    assert torch.equal(ta.x, tb.x) and torch.equal(ta.edge_index, tb.edge_index)
    assert not torch.equal(ta.x, tc.x)
    n = ta.num_nodes
    masks = ta.masks
    assert int(masks["train"].sum()) == 4 * 20 and int(masks["val"].sum()) == 100
    assert not (masks["train"] & masks["val"]).any() and not (masks["val"] & masks["test"]).any()
    assert int((masks["train"] | masks["val"] | masks["test"]).sum()) == n
    # undirected, no self loops, homophilous
    ei = ta.edge_index
    assert (ei[0] != ei[1]).all()
    fwd = set(map(tuple, ei.t().tolist()))
    assert all((j, i) in fwd for i, j in fwd)
    same = (ta.y[ei[0]] == ta.y[ei[1]]).float().mean().item()
    assert same > 0.6
    assert a.num_classes == 4 and not a.multilabel and a.metric == "accuracy"


def test_load_dataset_rejects_bad_names():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("reddit")
    with pytest.raises(TypeError):
        load_dataset(3)
    with pytest.raises(ValueError):
        synthetic_csbm(num_nodes=50)


# --------------------------------------------------------------------------- Planetoid
@pytest.mark.parametrize("name,nodes,edges,feats,classes", [
    ("cora", 2708, 10556, 1433, 7), ("citeseer", 3327, 9104, 3703, 6)])
def test_planetoid_real_files(name, nodes, edges, feats, classes):
    root = _data_root()
    if root is None or not os.path.isdir(os.path.join(root, {"cora": "Cora", "citeseer": "CiteSeer"}[name], "raw")):
        pytest.skip(f"no {name} raw files under $FASTALIGN_DATA (set it to the folder that holds {name}'s raw files)")
    pytest.importorskip("torch_geometric")
    d = load_dataset(name, root)
    t = d.transductive
    assert (t.num_nodes, t.edge_index.size(1), d.num_features, d.num_classes) == (nodes, edges, feats, classes)
    counts = [int(t.masks[s].sum()) for s in ("train", "val", "test")]
    assert counts == [20 * classes, 500, 1000]
    # row-normalised bag-of-words features
    rows = t.x.sum(1)
    assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-5)
    # the root is read-only or left clean: nothing of ours was written next to raw/
    assert t.graph.num_edges == edges


def _write_planetoid(raw, name, rng, n_train=6, n_val_pool=520, n_test=10, n_feat=12, n_cls=3):
    """Small ind.<name>.* files in the Planetoid format (pickled scipy/numpy, text index).
    PyG takes the 500 nodes after the training ones as validation, so the pool holds 520."""
    os.makedirs(raw)
    n_all = n_train + n_val_pool  # allx covers train + the rest of the labelled pool
    n = n_all + n_test

    def feats(k):
        return sp.csr_matrix(rng.random((k, n_feat)) * (rng.random((k, n_feat)) < 0.3))

    def onehot(k):
        y = np.zeros((k, n_cls))
        y[np.arange(k), rng.integers(0, n_cls, k)] = 1
        return y

    allx, ally = feats(n_all), onehot(n_all)
    parts = {"x": allx[:n_train], "y": ally[:n_train], "allx": allx, "ally": ally,
             "tx": feats(n_test), "ty": onehot(n_test)}
    test_index = rng.permutation(np.arange(n_all, n))
    graph = {i: sorted({int(j) for j in rng.integers(0, n, 3) if j != i}) for i in range(n)}
    for i, nb in list(graph.items()):  # symmetric
        for j in nb:
            graph.setdefault(j, [])
            if i not in graph[j]:
                graph[j].append(i)
    parts["graph"] = graph
    for key, obj in parts.items():
        with open(os.path.join(raw, f"ind.{name}.{key}"), "wb") as f:
            pickle.dump(obj, f)
    with open(os.path.join(raw, f"ind.{name}.test.index"), "w") as f:
        f.write("\n".join(map(str, test_index)) + "\n")
    return n, n_feat, n_cls, parts, test_index


def test_pubmed_loader_on_written_files(tmp_path):
    pytest.importorskip("torch_geometric")
    rng = np.random.default_rng(0)
    n, n_feat, n_cls, parts, test_index = _write_planetoid(str(tmp_path / "PubMed" / "raw"), "pubmed", rng)
    d = load_dataset("pubmed", str(tmp_path))
    t = d.transductive
    assert (t.num_nodes, d.num_features, d.num_classes) == (n, n_feat, n_cls)
    assert int(t.masks["train"].sum()) == 6 and int(t.masks["test"].sum()) == 10
    # the test rows land at their test.index positions, in file order
    tx = torch.tensor(parts["tx"].toarray(), dtype=torch.float)
    tx = tx / tx.sum(1, keepdim=True).clamp(min=1e-12)
    assert torch.allclose(t.x[torch.as_tensor(test_index)], tx, atol=1e-6)
    assert torch.equal(t.y[torch.as_tensor(test_index)], torch.as_tensor(parts["ty"].argmax(1)))
    assert t.edge_index.size(1) == sum(len(v) for v in parts["graph"].values())


def _our_temp_folders():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "fastalign-data-*")))


def test_planetoid_read_only_root_is_read_through_a_removed_copy(tmp_path):
    """A folder without write bits is not written into, by root either (os.access says
    yes to root), and the temporary copy is gone once the data set is loaded."""
    pytest.importorskip("torch_geometric")
    rng = np.random.default_rng(1)
    raw = tmp_path / "PubMed" / "raw"
    _write_planetoid(str(raw), "pubmed", rng)
    for f in raw.iterdir():
        os.chmod(f, 0o444)
    os.chmod(raw, 0o555)
    os.chmod(tmp_path / "PubMed", 0o555)
    before = _our_temp_folders()
    try:
        d = load_dataset("pubmed", str(tmp_path))
        assert d.transductive.num_nodes == 536
        assert not (tmp_path / "PubMed" / "processed").exists()
        assert _our_temp_folders() == before  # the copy was removed
    finally:
        os.chmod(tmp_path / "PubMed", 0o755)
        os.chmod(raw, 0o755)


def test_planetoid_missing_files_fail_clearly_and_download_only_when_asked(tmp_path, monkeypatch):
    pytest.importorskip("torch_geometric")
    from torch_geometric.datasets import Planetoid

    calls = []

    def no_network(*a, **k):
        calls.append(1)
        raise OSError("no network")

    monkeypatch.setattr(Planetoid, "download", no_network)
    with pytest.raises(FileNotFoundError, match=r"ind\.pubmed\.x.*--download"):
        load_dataset("pubmed", str(tmp_path))
    assert not calls  # nothing fetched unless asked
    with pytest.raises(RuntimeError, match="could not download PubMed"):
        load_dataset("pubmed", str(tmp_path), download=True)
    assert calls


def test_a_data_root_that_does_not_exist_is_said_plainly(tmp_path):
    pytest.importorskip("torch_geometric")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cora", str(tmp_path / "nonexistent"))


# --------------------------------------------------------------------------- PPI
def _write_ppi(raw, rng, n_feat=5, n_lab=121):
    os.makedirs(raw)
    layout = {"train": [7, 9, 6], "valid": [8], "test": [5, 6]}
    expected = {}
    for split, sizes in layout.items():
        n = sum(sizes)
        graph_id = np.concatenate([np.full(s, g + 1) for g, s in enumerate(sizes)])
        links, off = [], 0
        for s in sizes:
            for _ in range(2 * s):
                i, j = rng.integers(off, off + s, 2)
                links.append({"source": int(i), "target": int(j)})
            off += s
        g = {"directed": False, "multigraph": False, "graph": {},
             "nodes": [{"id": i, "test": split == "test", "val": split == "valid"} for i in range(n)],
             "links": links}
        with open(os.path.join(raw, f"{split}_graph.json"), "w") as f:
            json.dump(g, f)
        feats = rng.standard_normal((n, n_feat)).astype(np.float32)
        labels = (rng.random((n, n_lab)) < 0.3).astype(np.int64)
        np.save(os.path.join(raw, f"{split}_feats.npy"), feats)
        np.save(os.path.join(raw, f"{split}_labels.npy"), labels)
        np.save(os.path.join(raw, f"{split}_graph_id.npy"), graph_id)
        expected[split] = (sizes, links, feats, labels)
    return expected


def test_ppi_loader_on_written_files(tmp_path):
    rng = np.random.default_rng(0)
    expected = _write_ppi(str(tmp_path / "PPI" / "raw"), rng)
    d = load_dataset("ppi", str(tmp_path))
    assert d.inductive and d.multilabel and d.metric == "micro_f1"
    assert (d.num_features, d.num_classes) == (5, 121)
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        sizes, links, feats, labels = expected[key]
        graphs = d.graphs[split]
        assert [g.num_nodes for g in graphs] == sizes
        off = 0
        for g, s in zip(graphs, sizes):
            assert torch.allclose(g.x, torch.from_numpy(feats[off:off + s]))
            assert torch.equal(g.y, torch.from_numpy(labels[off:off + s]).float())
            want = {(l["source"] - off, l["target"] - off) for l in links
                    if off <= l["source"] < off + s and l["source"] != l["target"]}
            want |= {(j, i) for i, j in want}
            assert set(map(tuple, g.edge_index.t().tolist())) == want
            off += s
    # mini-batches of training graphs: block-diagonal, every graph once per epoch
    batches = d.train_batches(2, torch.Generator().manual_seed(0))
    assert sorted(b.num_nodes for b in batches) == sorted([7 + 9, 6]) or \
        sum(b.num_nodes for b in batches) == 22
    assert len(batches) == 2 and all(bool(b.masks["train"].all()) for b in batches)
    splits = [list(b.masks) for b in d.eval_batches(2)]
    assert splits == [["val"], ["test"]]


def test_ppi_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="PPI"):
        load_dataset("ppi", str(tmp_path))


@pytest.mark.parametrize("damage,message", [
    (lambda raw: open(os.path.join(raw, "valid_graph.json"), "w").write('{"links": [{"sou'),
     "valid_graph.json: damaged"),
    (lambda raw: open(os.path.join(raw, "test_feats.npy"), "wb").write(b"garbage"), "test_feats.npy: damaged"),
    (lambda raw: np.save(os.path.join(raw, "train_labels.npy"), np.zeros((3, 121))),
     "train_labels.npy has 3 rows but .*train_feats.npy has 22"),
    (lambda raw: np.save(os.path.join(raw, "test_feats.npy"), np.zeros((11, 7), np.float32)),
     "widths differ"),
    (lambda raw: open(os.path.join(raw, "train_graph.json"), "w").write('{"links": [{"a": 1}]}'),
     "train_graph.json: not a node-link graph"),
])
def test_ppi_damaged_or_mismatched_files_are_named(tmp_path, damage, message, capsys):
    from fastalign.cli import main
    from fastalign.datasets import DatasetError

    raw = str(tmp_path / "PPI" / "raw")
    _write_ppi(raw, np.random.default_rng(0))
    damage(raw)
    with pytest.raises(DatasetError, match=message):
        load_dataset("ppi", str(tmp_path))
    with pytest.raises(SystemExit) as stop:  # the command line: one line, exit status 2
        main(["train", "--dataset", "ppi", "--root", str(tmp_path), "--epochs", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("fastalign train: error:")


def test_planetoid_damaged_file_is_named(tmp_path, capsys):
    import shutil

    root = _data_root()
    if root is None or not os.path.isdir(os.path.join(root, "Cora", "raw")):
        pytest.skip("no Cora raw files under $FASTALIGN_DATA (set it to the folder that holds Cora/raw)")
    pytest.importorskip("torch_geometric")
    from fastalign.datasets import DatasetError

    shutil.copytree(os.path.join(root, "Cora", "raw"), tmp_path / "Cora" / "raw", copy_function=shutil.copyfile)
    path = tmp_path / "Cora" / "raw" / "ind.cora.tx"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="ind.cora.tx: damaged or not a Planetoid file"):
        load_dataset("cora", str(tmp_path))


def test_merge_graphs_offsets():
    a = synthetic_csbm(num_nodes=200, seed=0).transductive
    b = synthetic_csbm(num_nodes=200, seed=1).transductive
    m = merge_graphs([a, b], "train")
    assert m.num_nodes == 400 and m.edge_index.size(1) == a.edge_index.size(1) + b.edge_index.size(1)
    assert int(m.edge_index[:, a.edge_index.size(1):].min()) >= 200


def test_synthetic_large_graphs_are_drawn_edge_by_edge():
    """Above DENSE_CSBM_NODES the block model is drawn in O(E): the same expected mean
    degree and in-block share, undirected, no self loops or duplicates, seeded."""
    from fastalign.datasets import DENSE_CSBM_NODES

    n = DENSE_CSBM_NODES + 5_000
    d = synthetic_csbm(num_nodes=n, avg_degree=12, homophily=0.7, seed=3)
    b = d.transductive
    src, dst = b.edge_index
    assert abs(b.edge_index.size(1) / n - 12) < 0.2
    assert abs((b.y[src] == b.y[dst]).float().mean().item() - 0.7) < 0.01
    assert not (src == dst).any()
    key = src * n + dst
    assert key.unique().numel() == key.numel()  # no duplicate edge
    assert torch.equal(torch.sort(key).values, torch.sort(dst * n + src).values)  # both directions
    again = synthetic_csbm(num_nodes=n, avg_degree=12, homophily=0.7, seed=3).transductive
    assert torch.equal(again.edge_index, b.edge_index) and torch.equal(again.x, b.x)


def test_random_node_parts_are_the_induced_subgraphs():
    from fastalign.datasets import random_node_parts

    b = synthetic_csbm(num_nodes=400, seed=1).transductive
    parts = random_node_parts(b, 3, torch.Generator().manual_seed(0))
    assert sorted(p.num_nodes for p in parts) == [133, 133, 134]
    # every node in exactly one part; find each part's nodes by their features (distinct rows)
    row_of = {tuple(r.tolist()): i for i, r in enumerate(b.x)}
    seen, kept = [], 0
    for p in parts:
        ids = torch.tensor([row_of[tuple(r.tolist())] for r in p.x])
        seen += ids.tolist()
        assert torch.equal(p.y, b.y[ids])
        for split, mask in p.masks.items():
            assert torch.equal(mask, b.masks[split][ids])
        inside = torch.zeros(b.num_nodes, dtype=torch.bool)
        inside[ids] = True
        src, dst = b.edge_index
        want = {(a, c) for a, c in zip(src.tolist(), dst.tolist()) if inside[a] and inside[c]}
        got = {(ids[a].item(), ids[c].item()) for a, c in p.edge_index.t().tolist()}
        assert got == want and p.edge_index.size(1) == len(want)
        assert p.graph.num_dst == p.graph.num_src == p.num_nodes
        kept += len(want)
    assert sorted(seen) == list(range(b.num_nodes))
    assert 0 < kept < b.edge_index.size(1)
    with pytest.raises(ValueError, match="num_parts"):
        random_node_parts(b, 0)
    # a different draw every call of the same generator (a fresh partition per epoch)
    gen = torch.Generator().manual_seed(0)
    first, second = random_node_parts(b, 3, gen), random_node_parts(b, 3, gen)
    assert not torch.equal(first[0].x, second[0].x)
    from fastalign.datasets import NodeDataset

    d = NodeDataset("t", b.x.size(1), 4, False, transductive=b)
    assert d.train_batches(num_parts=1) == [b] and len(d.train_batches(num_parts=4)) == 4
