"""torch.distributed on the CPU (gloo, 2 processes spawned here): the trainer with its
students spread over processes repeats the single-process simultaneous run, and a model
of fastalign layers trains under DistributedDataParallel as it trains in one process."""

import json
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastalign.datasets import synthetic_csbm
from fastalign.distill import DistributedWorld, LossWeights, TrainConfig, World, run_experiment
from fastalign.distill.trainer import ALTERNATING_DISTRIBUTED, train_run

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
WORLD = 2


def spawn(fn, *args):
    # Rendezvous through a file, not a TCP port: no port picked here can be taken by
    # another process before the ranks bind it, and no rank hosts a store server that
    # the other still talks to while it exits.
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.spawn(_entry, args=(fn, store, args), nprocs=WORLD, join=True)


def _entry(rank, fn, store, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
        dist.barrier()  # no rank tears its connections down while another still uses them
    finally:
        dist.destroy_process_group()


def config(students, **kw):
    base = dict(hidden=16, epochs=4, students=students, layers=3, mode="simultaneous", backend="torch")
    base.update(kw)
    return TrainConfig(**base)


def _train(rank, cfg, path):
    data = synthetic_csbm(num_nodes=300, seed=0)
    result = run_experiment(cfg, data, [0, 1], world=DistributedWorld(cfg.students, "cpu"))
    if rank == 0:
        with open(path, "w") as f:
            json.dump(result, f)


@pytest.mark.parametrize("students,weights", [(2, LossWeights()), (3, LossWeights(sigma="auto"))])
def test_distributed_students_repeat_the_single_process_run(tmp_path, students, weights):
    """Student k on rank k % 2 (K = 3: two on rank 0, one on rank 1), the peers'
    embeddings all-gathered every step: the same scores, best epochs, ensemble and
    structure terms as one process (the same floating-point operations in the same
    order: scores compared exactly). The logged loss terms are each student's float32
    values averaged over the students: in one process in float32, across processes as
    float64 sums, so they agree to float32 rounding (1e-6)."""
    cfg = config(students, weights=weights)
    path = tmp_path / "dist.json"
    spawn(_train, cfg, str(path))
    got = json.loads(path.read_text())
    want = run_experiment(cfg, synthetic_csbm(num_nodes=300, seed=0), [0, 1])
    assert got["seeds"] == want["seeds"] == [0, 1]
    for g, w in zip(got["runs"], want["runs"]):
        assert g["students"] == w["students"]
        assert g["ensemble"] == w["ensemble"]
        assert g["processes"] == WORLD and w["processes"] == 1
        for a, b in zip(g["structure_by_pair"], w["structure_by_pair"]):
            assert a["pair"] == b["pair"]
            assert a["mean"] == pytest.approx(b["mean"], rel=1e-6)
        # per step each rank sends its (padded) students' outputs of every target layer
        slots = -(-students // WORLD)
        widths = 16 + 16 + 4  # layers 0 and 1 (hidden 16) and the logits (4 classes)
        assert g["exchanged_bytes_per_step"] == slots * 300 * widths * 4
        assert w["exchanged_bytes_per_step"] == 0
    assert got["mean_test_acc"] == want["mean_test_acc"]


def _write_value_error(rank, path, fn):
    """Rank 0 writes the message of the ValueError that ``fn`` raises (on every rank)."""
    try:
        fn()
    except ValueError as exc:
        if rank == 0:
            with open(path, "w") as f:
                f.write(str(exc))


def _refuse_alternating(rank, path):
    data = synthetic_csbm(num_nodes=300, seed=0)
    cfg = config(2, mode="alternating", epochs=1)
    _write_value_error(rank, path, lambda: train_run(cfg, data, 0, world=DistributedWorld(2, "cpu")))


def test_distributed_refuses_alternating_mode(tmp_path):
    path = tmp_path / "msg.txt"
    spawn(_refuse_alternating, str(path))
    assert path.read_text() == ALTERNATING_DISTRIBUTED
    assert "--mode simultaneous" in ALTERNATING_DISTRIBUTED


def _too_few_students(rank, path):
    _write_value_error(rank, path, lambda: DistributedWorld(1, "cpu"))


def test_distributed_needs_a_student_per_process(tmp_path):
    path = tmp_path / "msg.txt"
    spawn(_too_few_students, str(path))
    assert "at least one student" in path.read_text()


def test_distributed_world_needs_a_process_group():
    with pytest.raises(RuntimeError, match="torchrun"):
        DistributedWorld(2, "cpu")
    assert World(3).local() == [0, 1, 2]


# ----------------------------------------------------------------------------- DDP
def _model():
    from fastalign.nn import GCNConv, SAGEConv

    torch.manual_seed(0)
    return torch.nn.ModuleList([GCNConv(8, 16, backend="cpu"), SAGEConv(16, 4, backend="cpu")])


def _forward(model, x, edge_index):
    return model[1](torch.relu(model[0](x, edge_index)), edge_index)


def _graph():
    gen = torch.Generator().manual_seed(1)
    edge_index = torch.randint(0, 60, (2, 400), generator=gen)
    x = torch.randn(60, 8, generator=gen)
    y = torch.randint(0, 4, (60,), generator=gen)
    return edge_index, x, y


class _Wrapped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _model()

    def forward(self, x, edge_index):
        return _forward(self.layers, x, edge_index)


def _ddp_train(rank, path):
    from torch.nn.parallel import DistributedDataParallel

    edge_index, x, y = _graph()
    model = DistributedDataParallel(_Wrapped())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    nodes = torch.arange(60)[rank::WORLD]
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x, edge_index)[nodes], y[nodes])
        loss.backward()
        opt.step()
    params = [p.detach().clone() for p in model.parameters()]
    gathered = [[torch.empty_like(p) for p in params] for _ in range(WORLD)]
    for i, p in enumerate(params):
        parts = [torch.empty_like(p) for _ in range(WORLD)]
        dist.all_gather(parts, p)
        for r in range(WORLD):
            gathered[r][i] = parts[r]
    if rank == 0:
        torch.save(gathered, path)


def test_fastalign_layers_train_under_ddp(tmp_path):
    """Gradients of fastalign layers are all-reduced by DDP: both ranks end with the same
    weights, those of one process minimising the mean of the two ranks' losses."""
    path = tmp_path / "params.pt"
    spawn(_ddp_train, str(path))
    ranks = torch.load(path)
    for a, b in zip(*ranks):
        assert torch.equal(a, b)
    edge_index, x, y = _graph()
    model = _Wrapped()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        out = model(x, edge_index)
        loss = sum(torch.nn.functional.cross_entropy(out[torch.arange(60)[r::WORLD]], y[torch.arange(60)[r::WORLD]])
                   for r in range(WORLD)) / WORLD
        loss.backward()
        opt.step()
    for got, want in zip(ranks[0], model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
