"""The Alignahead++ trainer: pairing, loss wiring, modes, determinism, the CLI."""

import json
import math

import pytest
import torch

from fastalign import backends, ops
from fastalign.datasets import load_dataset, synthetic_csbm
from fastalign.distill import (LossWeights, Student, TrainConfig, layer_pairs,
                               run_experiment, score, student_loss)
from fastalign.distill.losses import FeatureAdapters, alignment_losses
from fastalign.sparse_features import SparseFeatures
from fastalign.distill.trainer import build_students, train_step

BACKEND = "torch"  # the reference semantics; the compiled kernels are tested elsewhere


def small(**kw):
    base = dict(hidden=16, epochs=3, students=2, backend=BACKEND)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data():
    return synthetic_csbm(num_nodes=300, seed=0)


# ----------------------------------------------------------------------------- pairing
def test_layer_pairs():
    assert layer_pairs(3, "ahead") == [(0, 1), (1, 2), (2, 0)]
    assert layer_pairs(3, "behind") == [(0, 2), (1, 0), (2, 1)]
    assert layer_pairs(3, "one-to-one") == [(0, 0), (1, 1), (2, 2)]
    assert layer_pairs(3, "none") == []
    assert layer_pairs(2, "ahead") == [(0, 1), (1, 0)]
    # ahead and behind are inverse maps of each other
    ahead = dict(layer_pairs(8, "ahead"))
    behind = dict(layer_pairs(8, "behind"))
    assert all(behind[ahead[l]] == l for l in range(8))
    with pytest.raises(ValueError):
        layer_pairs(3, "sideways")
    with pytest.raises(ValueError):
        layer_pairs(0, "ahead")


# ----------------------------------------------------------------------------- students
@pytest.mark.parametrize("model", ["gcn", "sage", "gat"])
def test_student_outputs(data, model):
    b = data.transductive
    s = Student(model, data.num_features, 16, data.num_classes, num_layers=4, deep_supervision=True,
                heads=4, backend=BACKEND)
    out = s(b.graph, b.edge_index, b.x)
    assert len(out.hiddens) == 4 and len(out.aux_logits) == 3
    assert [h.shape[1] for h in out.hiddens] == [16, 16, 16, data.num_classes]
    assert out.logits is out.hiddens[-1]
    assert all(a.shape == (b.num_nodes, data.num_classes) for a in out.aux_logits)


@pytest.mark.parametrize("model", ["gcn", "sage", "gat"])
def test_sparse_features_match_dense(model):
    torch.manual_seed(0)
    d = synthetic_csbm(num_nodes=200, seed=1)
    b = d.transductive
    x = b.x * (torch.rand_like(b.x) < 0.05)
    s = Student(model, d.num_features, 16, d.num_classes, heads=4, backend=BACKEND).eval()
    dense = s(b.graph, b.edge_index, x).logits
    sparse = s(b.graph, b.edge_index, SparseFeatures.from_dense(x)).logits
    torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-5)


def test_student_bad_arguments(data):
    with pytest.raises(ValueError, match="num_layers"):
        Student("gcn", 8, 16, 3, num_layers=1)
    with pytest.raises(ValueError, match="num_layers"):
        Student("gcn", 8, 16, 3, num_layers=17)
    with pytest.raises(ValueError, match="model"):
        Student("mlp", 8, 16, 3)
    with pytest.raises(ValueError, match="divisible"):
        Student("gat", 8, 15, 3, heads=4)
    with pytest.raises(ValueError):
        TrainConfig(mode="sometimes")
    with pytest.raises(ValueError):
        TrainConfig(backend="fpga")
    with pytest.raises(ValueError):
        LossWeights(structure=-1)


# ----------------------------------------------------------------------------- losses
def test_feature_align_values():
    adapters = FeatureAdapters([16, 16, 3], [(0, 1), (1, 2), (2, 0)])
    h = torch.randn(10, 16)
    assert adapters(h, h, 0, 1).item() == pytest.approx(0.0)  # identity-initialised
    assert adapters(h + 0.5, h, 0, 1).item() == pytest.approx(0.25)  # MSE over nodes and features
    assert torch.equal(adapters.maps["0_1"].adapter.weight, torch.eye(16))
    assert adapters.maps["1_2"].adapter.weight.shape == (3, 16)
    assert adapters.maps["2_0"].adapter.weight.shape == (16, 3)
    assert adapters(torch.randn(5, 3), torch.randn(5, 16), 2, 0).dim() == 0


def test_gradients_reach_only_the_updated_student(data):
    torch.manual_seed(0)
    b = data.transductive
    cfg = small(layers=3)
    students, adapters, _, pairs = build_students(cfg, data)
    assert sorted(adapters[0].maps) == ['0_1', '1_2', '2_0']
    out0 = students[0](b.graph, b.edge_index, b.x)
    out1 = students[1](b.graph, b.edge_index, b.x)  # NOT under no_grad: detach must cut it
    for weights in (LossWeights(structure=1, feature=0, deep_supervision=0),
                    LossWeights(structure=0, feature=1, deep_supervision=0)):
        for m in students + adapters:
            m.zero_grad(set_to_none=True)
        loss, parts = student_loss(b, out0, [out1.hiddens], pairs, adapters[0], weights, False, BACKEND)
        align = parts["structure"] + parts["feature"]
        assert align.item() > 0
        # the gradient of the alignment terms alone
        s, f, _ = alignment_losses(b.graph, out0.hiddens, [out1.hiddens], pairs, adapters[0], weights, BACKEND)
        (s + f).backward(retain_graph=True)
        assert all(p.grad is None for p in students[1].parameters())
        assert all(p.grad is None for p in adapters[1].parameters())
        grads = [p.grad for p in students[0].parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum().item() for g in grads) > 0
        if weights.feature > 0:
            assert all(p.grad is not None for p in adapters[0].parameters())


def _count_forwards(students):
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for s in students:
        s.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("mode,expected", [("alternating", 3 + 3 * 2), ("simultaneous", 3)])
def test_forwards_per_step(data, mode, expected):
    torch.manual_seed(0)
    cfg = small(students=3, mode=mode)
    students, adapters, opts, pairs = build_students(cfg, data)
    calls = _count_forwards(students)
    before = [[p.detach().clone() for p in s.parameters()] for s in students]
    parts = train_step(cfg, data.transductive, students, adapters, opts, pairs, False)
    assert calls[0] == expected
    assert parts["structure"] > 0 and parts["feature"] > 0
    for s, old in zip(students, before):  # every student updated once
        assert any(not torch.equal(p, q) for p, q in zip(s.parameters(), old))


def test_alternating_updates_one_student_at_a_time(data):
    """While student k steps, no other student's weights move."""
    torch.manual_seed(0)
    cfg = small(students=3)
    students, adapters, opts, pairs = build_students(cfg, data)
    snapshots = []
    for k, opt in enumerate(opts):
        orig = opt.step

        def step(*a, _k=k, _orig=orig, **kw):
            before = [[p.detach().clone() for p in s.parameters()] for s in students]
            r = _orig(*a, **kw)
            moved = [any(not torch.equal(p, q) for p, q in zip(s.parameters(), old))
                     for s, old in zip(students, before)]
            snapshots.append((_k, moved))
            return r

        opt.step = step
    train_step(cfg, data.transductive, students, adapters, opts, pairs, False)
    assert [k for k, _ in snapshots] == [0, 1, 2]
    for k, moved in snapshots:
        assert moved == [j == k for j in range(3)]


def test_baseline_has_no_alignment(data):
    for cfg in (small(students=1), small(students=2, align="none")):
        torch.manual_seed(0)
        students, adapters, opts, pairs = build_students(cfg, data)
        assert pairs == [] and all(len(a.maps) == 0 for a in adapters)
        parts = train_step(cfg, data.transductive, students, adapters, opts, pairs, False)
        assert parts["structure"] == 0 and parts["feature"] == 0


def test_no_deep_supervision_has_no_aux_heads(data):
    cfg = small(deep_supervision=False, layers=4)
    students, *_ = build_students(cfg, data)
    assert len(students[0].aux) == 0


# ----------------------------------------------------------------------------- metrics
def test_score():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert score(probs, torch.tensor([0, 1, 1]), False) == pytest.approx(2 / 3)
    ml = torch.tensor([[0.9, 0.2], [0.7, 0.6]])
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # tp = 2 (0,0),(1,1); fp = 1 (1,0); fn = 1 (0,1) -> 2*2 / (4 + 1 + 1)
    assert score(ml, y, True) == pytest.approx(4 / 6)


# ----------------------------------------------------------------------------- runs
def test_training_learns_and_is_deterministic(data):
    cfg = small(epochs=30)
    r1 = run_experiment(cfg, data, [0, 1])
    r2 = run_experiment(cfg, data, [0, 1])
    strip = lambda r: [{k: v for k, v in run.items() if k not in ("epoch_time_s", "student_inference_ms")} for run in r["runs"]]
    assert strip(r1) == strip(r2)
    assert r1["mean_test_acc"] > 0.6  # 4 balanced classes: chance is 0.25
    assert len(r1["runs"]) == 2 and len(r1["runs"][0]["students"]) == 2
    r3 = run_experiment(cfg, data, [2])
    assert strip(r3) != strip(r1)[:1]


@pytest.mark.parametrize("mode,align", [("simultaneous", "behind"), ("alternating", "one-to-one")])
def test_other_modes_run(data, mode, align):
    r = run_experiment(small(mode=mode, align=align, layers=3, epochs=5), data, [0])
    assert 0.0 <= r["mean_test_acc"] <= 1.0


def test_ppi_training_smoke(tmp_path):
    from test_datasets import _write_ppi

    import numpy as np

    _write_ppi(str(tmp_path / "PPI" / "raw"), np.random.default_rng(0))
    d = load_dataset("ppi", str(tmp_path))
    r = run_experiment(small(epochs=2, batch_size=2), d, [0])
    assert r["metric"] == "micro_f1"
    assert 0.0 <= r["mean_test_acc"] <= 1.0 and r["mean_test_acc"] > 0.1


# ----------------------------------------------------------------------------- CLI
def test_cli_train_writes_json(tmp_path, capsys):
    from fastalign.cli import main

    path = tmp_path / "out" / "r.json"
    rc = main(["train", "--epochs", "4", "--students", "2", "--hidden", "16", "--seeds", "0", "1",
               "--backend", BACKEND, "--layers", "3", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ensemble" in out and "student" in out
    r = json.loads(path.read_text())
    assert 0.0 <= r["mean_test_acc"] <= 1.0 and r["std_test_acc"] >= 0 and r["epoch_time_s"] > 0
    assert r["dataset"] == "synthetic" and r["config"]["layers"] == 3
    assert [run["seed"] for run in r["runs"]] == [0, 1]
    for run in r["runs"]:
        assert [s["student"] for s in run["students"]] == [0, 1]
        assert all(0 <= s["val"] <= 1 and 0 <= s["test"] <= 1 for s in run["students"])
    tests = [s["test"] for run in r["runs"] for s in run["students"]]
    assert r["mean_test_acc"] == pytest.approx(sum(tests) / len(tests))


def test_cli_sigma_auto_logs_the_structure_term_per_pair(tmp_path, capsys):
    """--sigma auto trains; the unweighted structure KL of each aligned pair is in the
    progress lines, the table and the JSON, and at the auto scale it is far from the
    ~0 of a kernel that flattens every local structure (sigma 100 on small embeddings)."""
    from fastalign.cli import main

    results = {}
    for sigma in ("auto", "100"):
        path = tmp_path / f"r_{sigma}.json"
        assert main(["train", "--epochs", "3", "--students", "2", "--hidden", "16", "--layers", "3",
                     "--seeds", "0", "--backend", BACKEND, "--sigma", sigma, "--log-every", "1",
                     "--json", str(path)]) == 0
        out = capsys.readouterr().out
        assert "struct " in out and "[0->1 " in out and " 2->0 " in out
        assert "structure KL (unweighted), per aligned pair" in out
        results[sigma] = json.loads(path.read_text())
    auto = results["auto"]
    assert auto["config"]["weights"]["sigma"] == "auto"
    pairs = auto["structure_by_pair"]
    assert [p["pair"] for p in pairs] == [[0, 1], [1, 2], [2, 0]]
    run_pairs = auto["runs"][0]["structure_by_pair"]
    assert [p["pair"] for p in run_pairs] == [[0, 1], [1, 2], [2, 0]]
    for p, q in zip(pairs, results["100"]["structure_by_pair"]):
        assert p["first_epoch"] > 0 and p["last_epoch"] > 0 and p["mean"] > 0
        assert p["mean"] > 10 * q["mean"], (p, q)


def test_structure_by_pair_empty_without_alignment(data):
    r = run_experiment(small(epochs=2, students=1), data, [0])
    assert r["structure_by_pair"] == [] and r["runs"][0]["structure_by_pair"] == []
    r = run_experiment(small(epochs=2, weights=LossWeights(structure=0.0)), data, [0])
    assert r["structure_by_pair"] == []


def test_students_start_alike_whatever_the_alignment(data):
    """For a seed, independent and distilled students start from the same weights (the
    adapters are drawn after every student), so their results can be paired per seed."""
    inits = []
    for cfg in (small(layers=3, students=3, align="none", weights=LossWeights(structure=0.0, feature=0.0)),
                small(layers=3, students=3, hidden=16, weights=LossWeights(sigma="auto"))):
        torch.manual_seed(7)
        students, adapters, _, _ = build_students(cfg, data)
        inits.append([torch.cat([p.detach().flatten() for p in s.parameters()]) for s in students])
        if cfg.align != "none":
            assert any(len(a.maps) for a in adapters)
    assert all(torch.equal(a, b) for a, b in zip(*inits))
    assert not torch.equal(inits[0][0], inits[0][1])  # ... and differ from one another


def test_cli_distributed_needs_torchrun(monkeypatch, capsys):
    from fastalign.cli import main

    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--distributed", "--mode", "simultaneous", "--epochs", "1"])
    assert exc.value.code == 2 and "launch with torchrun" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--distributed", "--mode", "alternating", "--epochs", "1"])
    assert exc.value.code == 2 and "cannot be spread over processes" in capsys.readouterr().err


def test_mini_batches_of_random_node_parts(data):
    """--num-parts P: every epoch the students train on the P subgraphs of a fresh random
    node partition (each update on one part, the structure and feature terms on its
    subgraph), and are selected on the whole graph."""
    from fastalign.distill import task_loss

    seen = []
    import fastalign.distill.trainer as tr
    orig = tr.train_step
    tr.train_step = lambda cfg, batch, *a, **k: (seen.append(batch.num_nodes), orig(cfg, batch, *a, **k))[1]
    try:
        r = run_experiment(small(epochs=2, num_parts=3, layers=3), data, [0])
    finally:
        tr.train_step = orig
    assert seen == [100, 100, 100] * 2
    assert 0.25 < r["mean_test_acc"] <= 1.0 and r["structure_by_pair"]
    # a part without labelled nodes gives no task signal (0, with a gradient), not NaN
    logits = torch.randn(5, 3, requires_grad=True)
    loss = task_loss(logits, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.bool), False)
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="num_parts"):
        small(num_parts=0)


def test_task_loss_is_the_mean_over_labelled_nodes_only():
    """Equal to the loss over the selected rows (both kinds), no gradient into unlabelled
    nodes, and their labels never read (out-of-range classes, NaN targets)."""
    from fastalign.distill import task_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    y = torch.randint(0, 4, (8,), generator=gen)
    y[~mask] = 99  # not a class: must not be read
    loss = task_loss(logits, y, mask, False)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits[mask], y[mask]))
    (grad,) = torch.autograd.grad(loss, logits)
    assert bool((grad[~mask] == 0).all()) and bool((grad[mask] != 0).any())
    ym = torch.rand(8, 4, generator=gen, dtype=torch.float64).round()
    ym[~mask] = float("nan")
    loss = task_loss(logits, ym, mask, True)
    torch.testing.assert_close(
        loss, torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], ym[mask]))
    (grad,) = torch.autograd.grad(loss, logits)
    assert bool(torch.isfinite(grad).all()) and bool((grad[~mask] == 0).all())


@pytest.mark.parametrize("kernel", ["l1", "rbf"])
def test_auto_sigma_scales_each_layer_once_per_step(kernel, monkeypatch):
    """sigma="auto" in the trainer's loss: the same bits as structure_kl(sigma="auto") on
    every pair and peer, with one edge_scale per student layer and per peer layer used
    (not one per pair and peer)."""
    import fastalign.ops as fops
    from fastalign import Graph
    from fastalign.distill.losses import alignment_losses
    from fastalign.distill.options import LossWeights
    from helpers import random_edge_index

    g = Graph.from_edge_index(random_edge_index(40, 40, 160, seed=2), num_nodes=40)
    gen = torch.Generator().manual_seed(1)
    hiddens = [torch.randn(40, 6, generator=gen, dtype=torch.float64, requires_grad=True) * (i + 1)
               for i in range(3)]
    peers = [[torch.randn(40, 6, generator=gen, dtype=torch.float64) * (3 - i) for i in range(3)]
             for _ in range(2)]
    pairs = [(0, 1), (1, 2), (2, 0)]
    w = LossWeights(structure=1.0, feature=0.0, kernel=kernel, sigma="auto")
    calls = []
    real = fops.edge_scale
    monkeypatch.setattr(fops, "edge_scale", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    s, _, by_pair = alignment_losses(g, hiddens, peers, pairs, None, w)
    assert len(calls) == 3 + 2 * 3  # student layers 0..2, then each peer's layers 0..2
    expect = torch.stack([fops.structure_kl(g, hiddens[l], p[m].detach(), kernel=kernel, sigma="auto")
                          for p in peers for l, m in pairs])
    assert torch.equal(s, expect.mean())
    assert torch.equal(by_pair, expect.detach().view(2, 3).mean(0))


def test_cli_synthetic_size_and_parts(tmp_path):
    from fastalign.cli import main

    path = tmp_path / "r.json"
    assert main(["train", "--nodes", "400", "--avg-degree", "6", "--num-parts", "2", "--epochs", "2",
                 "--backend", BACKEND, "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["config"]["num_parts"] == 2
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "cora", "--nodes", "400", "--epochs", "1"])


def test_loss_weights_sigma():
    assert LossWeights(sigma="auto").sigma == "auto"
    assert LossWeights(kernel="rbf", sigma="auto").kernel == "rbf"
    for bad in (dict(sigma="median"), dict(kernel="cosine", sigma="auto"), dict(sigma=-1.0),
                dict(sigma=0.0), dict(sigma=True)):
        with pytest.raises(ValueError, match="sigma"):
            LossWeights(**bad)


@pytest.mark.parametrize("argv", [["train", "--layers", "1"], ["train", "--students", "0"],
                                  ["train", "--align", "sideways"], ["train", "--dataset", "mnist"],
                                  ["train", "--sigma", "median"], ["train", "--sigma", "-1"]])
def test_cli_rejects_bad_arguments(argv):
    from fastalign.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv + ["--epochs", "1"])
    assert exc.value.code == 2


def test_cli_demo(capsys):
    from fastalign.cli import main

    assert main(["demo", "--nodes", "200", "--edges", "1000", "--backend", BACKEND]) == 0
    assert "structure_kl" in capsys.readouterr().out


def test_stop_callback_keeps_the_seeds_done(data):
    r = run_experiment(small(epochs=2, students=1), data, [0, 1, 2], stop=lambda: True)
    assert r["seeds"] == [0] and len(r["runs"]) == 1


# ----------------------------------------------------------------------------- deep-student recipe
@pytest.mark.parametrize("residual", ["plain", "initial", "gcnii"])
def test_residual_students(data, residual):
    torch.manual_seed(0)
    b = data.transductive
    kw = dict(num_layers=4, deep_supervision=True, backend=BACKEND)
    s = Student("gcn", data.num_features, 16, data.num_classes, residual=residual, residual_alpha=0.25, **kw).eval()
    out = s(b.graph, b.edge_index, b.x)
    assert [h.shape[1] for h in out.hiddens] == [16, 16, 16, data.num_classes]
    # recompute layer 2 (index 1) by hand from layer 1's output
    h1, layer = out.hiddens[0], s.layers[1]
    if residual == "gcnii":
        # aggregate first, initial residual, then identity mapping with b = log(0.5 / 1 + 1)
        agg = 0.75 * ops.gcn_aggregate(b.graph, h1, backend="torch") + 0.25 * h1
        beta = math.log(1.5)
        expect = torch.relu((1 - beta) * agg + beta * agg @ layer.lin.weight.t() + layer.bias)
    else:
        conv = torch.relu(layer(b.graph, b.edge_index, h1))
        expect = conv + h1 if residual == "plain" else 0.75 * conv + 0.25 * h1
    torch.testing.assert_close(out.hiddens[1], expect)
    # a 2-layer student is the same network whatever the residual setting
    torch.manual_seed(1)
    plain = Student("gcn", data.num_features, 16, data.num_classes, backend=BACKEND).eval()
    torch.manual_seed(1)
    res = Student("gcn", data.num_features, 16, data.num_classes, residual=residual, backend=BACKEND).eval()
    assert torch.equal(plain(b.graph, b.edge_index, b.x).logits, res(b.graph, b.edge_index, b.x).logits)
    with pytest.raises(ValueError, match="residual"):
        Student("gcn", 8, 16, 3, residual="dense")
    with pytest.raises(ValueError, match="residual_alpha"):
        Student("gcn", 8, 16, 3, residual="initial", residual_alpha=0.0)
    with pytest.raises(ValueError, match="gcnii"):
        Student("sage", 8, 16, 3, residual="gcnii")


def test_weight_decay_first_layer_only(data):
    cfg = small(layers=3, weight_decay_scope="first")
    students, adapters, opts, _ = build_students(cfg, data)
    g = opts[0].param_groups
    assert len(g) == 2 and g[0]["weight_decay"] == cfg.weight_decay and g[1]["weight_decay"] == 0.0
    first = {id(p) for p in students[0].layers[0].parameters()}
    assert {id(p) for p in g[0]["params"]} == first
    everything = {id(p) for p in students[0].parameters()} | {id(p) for p in adapters[0].parameters()}
    assert {id(p) for grp in g for p in grp["params"]} == everything
    # the default keeps one group with weight decay on everything
    students, adapters, opts, _ = build_students(small(layers=3), data)
    assert len(opts[0].param_groups) == 1 and opts[0].param_groups[0]["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="weight_decay_scope"):
        TrainConfig(weight_decay_scope="some")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="align_warmup"):
        TrainConfig(align_warmup=-1)


def test_hidden_weight_decay_sets_the_hidden_layers_apart(data):
    for scope in ("all", "first"):
        cfg = small(layers=4, weight_decay_scope=scope, hidden_weight_decay=0.01)
        students, adapters, opts, _ = build_students(cfg, data)
        groups = opts[0].param_groups
        hidden = {id(p) for layer in students[0].layers[1:3] for p in layer.parameters()}
        assert {id(p) for p in groups[-1]["params"]} == hidden and groups[-1]["weight_decay"] == 0.01
        # every parameter in exactly one group
        ids = [id(p) for g in groups for p in g["params"]]
        everything = {id(p) for p in students[0].parameters()} | {id(p) for p in adapters[0].parameters()}
        assert len(ids) == len(set(ids)) and set(ids) == everything
        first = {id(p) for p in students[0].layers[0].parameters()}
        if scope == "all":   # first layer, classifier layer, heads and adapters keep 5e-4
            assert len(groups) == 2 and groups[0]["weight_decay"] == 5e-4 and first <= {id(p) for p in groups[0]["params"]}
        else:                # first layer 5e-4, the rest none
            assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 0.01]
            assert {id(p) for p in groups[0]["params"]} == first
    with pytest.raises(ValueError, match="hidden_weight_decay"):
        TrainConfig(hidden_weight_decay=-1.0)


def test_patience_stops_once_every_student_stalls(data):
    r = run_experiment(small(epochs=200, patience=3, lr=0.05), data, [0])
    run = r["runs"][0]
    last_best = max(s["best_epoch"] for s in run["students"])
    assert run["epochs_run"] == last_best + 3 < 200
    # without patience every epoch runs
    assert run_experiment(small(epochs=5), data, [0])["runs"][0]["epochs_run"] == 5
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


def test_feature_pairs_hidden_only(data):
    cfg = small(layers=4, weights=LossWeights(feature_pairs="hidden"))
    students, adapters, opts, pairs = build_students(cfg, data)
    assert pairs == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert sorted(adapters[0].maps) == ["0_1", "1_2"]  # nothing to or from the logits (layer 3)
    parts = train_step(cfg, data.transductive, students, adapters, opts, pairs, False)
    assert parts["structure"] > 0 and parts["feature"] > 0
    # a 2-layer student has no hidden-to-hidden pair: no hint at all
    students, adapters, *_ = build_students(small(layers=2, weights=LossWeights(feature_pairs="hidden")), data)
    assert len(adapters[0].maps) == 0
    with pytest.raises(ValueError, match="feature_pairs"):
        LossWeights(feature_pairs="logits")


def test_align_warmup_scales_the_alignment_terms(data):
    torch.manual_seed(0)
    b = data.transductive
    cfg = small(layers=3)
    students, adapters, _, pairs = build_students(cfg, data)
    out0 = students[0](b.graph, b.edge_index, b.x)
    with torch.no_grad():
        peer = students[1](b.graph, b.edge_index, b.x).hiddens
    full, parts = student_loss(b, out0, [peer], pairs, adapters[0], cfg.weights, False, BACKEND)
    zero, _ = student_loss(b, out0, [peer], pairs, adapters[0], cfg.weights, False, BACKEND, align_scale=0.0)
    half, _ = student_loss(b, out0, [peer], pairs, adapters[0], cfg.weights, False, BACKEND, align_scale=0.5)
    align = cfg.weights.structure * parts["structure"] + cfg.weights.feature * parts["feature"]
    assert align.item() > 0
    torch.testing.assert_close(full - zero, align)
    torch.testing.assert_close(half - zero, 0.5 * align)
    # the trainer ramps it: epoch 1 of a 4-epoch warm-up uses a quarter
    seen = []
    import fastalign.distill.trainer as tr
    orig = tr.train_step
    tr.train_step = lambda *a, **k: (seen.append(a[-1]), orig(*a, **k))[1]
    try:
        run_experiment(small(epochs=6, align_warmup=4), data, [0])
    finally:
        tr.train_step = orig
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_schedule_and_deep_recipe_run(data):
    cfg = small(layers=4, hidden=32, epochs=4, residual="plain", weight_decay_scope="first",
                lr_schedule="cosine", align_warmup=2, weights=LossWeights(structure=100, feature=0.1,
                                                                          feature_pairs="hidden"))
    r = run_experiment(cfg, data, [0])
    assert 0.0 <= r["mean_test_acc"] <= 1.0
    assert r["config"]["residual"] == "plain" and r["config"]["weights"]["feature_pairs"] == "hidden"


def test_cli_deep_recipe_flags(tmp_path):
    from fastalign.cli import build_parser, config_from_args, main

    args = build_parser().parse_args(["train"])
    cfg = config_from_args(args)
    assert (cfg.residual, cfg.weight_decay_scope, cfg.lr_schedule, cfg.align_warmup) == ("none", "all", "constant", 0)
    assert cfg.weights.feature_pairs == "all" and cfg.hidden == 16 and cfg.weight_decay == 5e-4
    argv = ["train", "--layers", "4", "--residual", "initial", "--residual-alpha", "0.2",
            "--weight-decay-scope", "first", "--lr-schedule", "cosine", "--align-warmup", "3",
            "--feature-pairs", "hidden", "--epochs", "3", "--backend", BACKEND,
            "--json", str(tmp_path / "r.json")]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.residual, cfg.residual_alpha, cfg.weight_decay_scope, cfg.lr_schedule, cfg.align_warmup) == \
        ("initial", 0.2, "first", "cosine", 3)
    assert cfg.weights.feature_pairs == "hidden"
    assert main(argv) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["config"]["residual"] == "initial" and r["config"]["align_warmup"] == 3
    assert (cfg.hidden_weight_decay, cfg.patience) == (None, 0)
    cfg = config_from_args(build_parser().parse_args(["train", "--hidden-weight-decay", "0.01", "--patience", "100"]))
    assert (cfg.hidden_weight_decay, cfg.patience) == (0.01, 100)
    with pytest.raises(SystemExit):
        main(["train", "--residual", "dense", "--epochs", "1"])


def test_option_vocabulary_matches_the_ops():
    """The torch-free option lists the command line is built from agree with the code
    that uses them."""
    from fastalign.distill import options
    from fastalign import validation

    assert options.KERNELS == validation.KERNELS
    assert options.AUTO_SIGMA_KERNELS == validation.AUTO_SIGMA_KERNELS
    from fastalign import distill

    assert distill.MODELS == options.MODELS and distill.LossWeights is options.LossWeights


def test_small_graphs_train_on_one_thread_unless_the_user_chose(data, monkeypatch):
    """A small graph trains on one CPU thread (a parallel region beside a busy process
    waits for a thread that is not scheduled); OMP_NUM_THREADS overrides; the count is
    restored afterwards."""
    from fastalign.distill import trainer

    seen = []

    class Done(Exception):
        pass

    def fake_run(cfg, data, seed, log, world=None, save_dir=None, data_info=None, resume=False):
        seen.append(torch.get_num_threads())
        raise Done  # the thread count is all this test needs

    monkeypatch.setattr(trainer, "train_run", fake_run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    assert data.transductive.edge_index.size(1) < trainer.ONE_THREAD_EDGES
    with pytest.raises(Done):
        trainer.run_experiment(small(), data, [0])
    assert seen == [1] and torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))
    with pytest.raises(Done):
        trainer.run_experiment(small(), data, [0])
    assert seen == [1, before] and torch.get_num_threads() == before


def test_gat_students_use_the_fused_layer_on_every_backend(data):
    from fastalign.nn import GATConv

    b = data.transductive
    outs = []
    for backend in [n for n in ("torch", "cpu") if backends.is_available(n)]:
        torch.manual_seed(3)
        s = Student("gat", data.num_features, 16, data.num_classes, num_layers=3, heads=4, backend=backend)
        assert all(isinstance(layer.conv, GATConv) and layer.conv.backend == backend for layer in s.layers)
        torch.manual_seed(4)  # the same dropout masks (features and attention) on each backend
        out = s.double()(b.graph, b.edge_index, b.x.double()).logits
        out.sum().backward()
        outs.append((out, s.layers[0].conv.att_src.grad))
    for out, grad in outs[1:]:
        torch.testing.assert_close(out, outs[0][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, outs[0][1], rtol=1e-10, atol=1e-12)
