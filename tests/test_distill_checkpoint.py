"""Trained students kept, evaluated, predicted with and exported: fastalign train --save,
fastalign evaluate | predict | export, and the plain-PyTorch student behind export."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fastalign import Graph
from fastalign.cli import main
from fastalign.distill import checkpoint
from fastalign.distill.models import Student
from fastalign.distill.portable import PortableStudent

TRAIN = ["train", "--epochs", "6", "--nodes", "300", "--students", "2", "--log-every", "0"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two seeds x two students (GCN, 3 layers: deep supervision and feature adapters)."""
    folder = tmp_path_factory.mktemp("students")
    out = folder / "run.json"
    assert main(TRAIN + ["--layers", "3", "--seeds", "0", "1", "--save", str(folder), "--json", str(out)]) == 0
    return folder, json.loads(out.read_text())


def test_one_checkpoint_per_seed_and_student_readable_with_weights_only(saved):
    folder, result = saved
    names = sorted(p.name for p in folder.glob("*.pt"))
    assert names == ["run_seed0.pt", "run_seed1.pt",  # the runs' states, for --resume
                     "seed0_student0.pt", "seed0_student1.pt", "seed1_student0.pt", "seed1_student1.pt"]
    assert not list(folder.glob(".tmp-*"))
    for run in result["runs"]:
        for s in run["students"]:
            record = torch.load(folder / checkpoint.checkpoint_name(run["seed"], s["student"]), weights_only=True)
            assert record["format"] == checkpoint.FORMAT and record["format_version"] == checkpoint.FORMAT_VERSION
            # the kept epoch is the reported one, with its scores
            assert record["metrics"]["best_epoch"] == s["best_epoch"]
            assert record["metrics"]["val"] == s["val"] and record["metrics"]["test"] == s["test"]
            # the student proper apart from its training-only parts
            assert record["student"] and not any(k.startswith("aux") for k in record["student"])
            assert sorted(record["aux_heads"]) == ["0.bias", "0.weight", "1.bias", "1.weight"]
            assert record["adapters"] or record["config"]["weights"]["feature"] == 0
            assert record["config"]["layers"] == 3 and record["seed"] == run["seed"]
            assert record["data"]["name"] == "synthetic" and record["data"]["load"]["num_nodes"] == 300
            assert record["versions"]["torch"] == str(torch.__version__)
            # the size the training reports is the deployed student's
            assert result["student_parameters"] == sum(v.numel() for v in record["student"].values())
            assert result["student_bytes"] == 4 * result["student_parameters"]


def test_evaluate_reproduces_the_scores_of_the_kept_epoch(saved, tmp_path, capsys):
    folder, result = saved
    for run in result["runs"]:
        for s in run["students"]:
            out = tmp_path / f"eval{run['seed']}{s['student']}.json"
            path = folder / checkpoint.checkpoint_name(run["seed"], s["student"])
            assert main(["evaluate", str(path), "--json", str(out)]) == 0
            scores = json.loads(out.read_text())["scores"]
            assert sorted(scores) == ["test", "train", "val"]
            facts = json.loads(out.read_text())
            assert facts["parameters"] > 0 and facts["bytes"] == 4 * facts["parameters"]
            assert all(ms > 0 for ms in facts["inference_ms"].values())
            assert scores["val"] == s["val"] and scores["test"] == s["test"]
    assert "test" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".csv", ".pt"])
def test_predict_writes_every_node(saved, tmp_path, suffix):
    folder, _ = saved
    out = tmp_path / f"pred{suffix}"
    assert main(["predict", str(folder / "seed0_student1.pt"), "--out", str(out)]) == 0
    if suffix == ".pt":
        got = torch.load(out, weights_only=True)
        assert got["probs"].shape[0] == 300 and torch.equal(got["pred"], got["probs"].argmax(1))
        torch.testing.assert_close(got["probs"].sum(1), torch.ones(300))
    else:
        rows = out.read_text().splitlines()
        assert rows[0].startswith("node,class,p_0") and len(rows) == 301
        node, cls, *probs = rows[1].split(",")
        assert node == "0" and int(cls) == max(range(len(probs)), key=lambda c: float(probs[c]))
    test_only = tmp_path / "test.pt"
    assert main(["predict", str(folder / "seed0_student1.pt"), "--split", "test", "--out", str(test_only)]) == 0
    assert 0 < torch.load(test_only, weights_only=True)["pred"].numel() < 300


def _student_and_graph(path, nodes, edges, seed):
    """The checkpoint's student, a random graph of its input width, and its logits there."""
    record = checkpoint.load(str(path))
    student = checkpoint.build_student(record)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(nodes, record["architecture"]["in_dim"], generator=gen)
    edge_index = torch.randint(0, nodes, (2, edges), generator=gen)
    with torch.no_grad():
        want = student(Graph.from_edge_index(edge_index, num_nodes=nodes), edge_index, x).logits
    return x, edge_index, want


def _run_elsewhere(tmp_path, x, edge_index, body, without_fastalign):
    """``body`` in a fresh Python process, with ``x`` and ``edge_index`` loaded and
    ``out`` to set; returns ``out``. ``without_fastalign``: importing fastalign fails there."""
    torch.save({"x": x, "edge_index": edge_index}, tmp_path / "inputs.pt")
    script = ("import sys, torch\n"
              + ("sys.modules['fastalign'] = None  # importing fastalign fails here\n" if without_fastalign else "")
              + f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
              + "x, edge_index = inputs['x'], inputs['edge_index']\n"
              + body
              + f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n")
    env = {**os.environ, "PYTHONPATH": ""} if without_fastalign else None
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(tmp_path / "out.pt")


def test_export_runs_where_fastalign_cannot_be_imported(saved, tmp_path):
    folder, _ = saved
    path = folder / "seed1_student0.pt"
    program = tmp_path / "student.pt2"
    assert main(["export", str(path), "--out", str(program)]) == 0
    # the student's own logits on a graph of another size than the export's example
    x, edge_index, want = _student_and_graph(path, 97, 500, seed=3)
    out = _run_elsewhere(tmp_path, x, edge_index, f"out = torch.export.load({str(program)!r}).module()(x, edge_index)\n",
                         without_fastalign=True)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("model,residual", [("gcn", "none"), ("gcn", "plain"), ("gcn", "initial"),
                                            ("gcn", "gcnii"), ("sage", "none"), ("sage", "initial"),
                                            ("gat", "none"), ("gat", "plain")])
def test_portable_student_computes_what_the_student_computes(model, residual):
    torch.manual_seed(0)
    n = 40
    # duplicate edges, stored self loops (one repeated), isolated nodes 35..39
    ei = torch.cat([torch.randint(0, 35, (2, 200)), torch.tensor([[3, 3, 7, 1], [3, 3, 7, 2]])], 1)
    x = torch.randn(n, 12, dtype=torch.float64)
    student = Student(model, 12, 16, 5, num_layers=3, deep_supervision=True, heads=4,
                      residual=residual).double().eval()
    with torch.no_grad():
        want = student(Graph.from_edge_index(ei, num_nodes=n), ei, x).logits
        got = PortableStudent.from_student(student)(x, ei)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_damaged_or_foreign_files_get_one_line(saved, tmp_path, capsys):
    folder, _ = saved
    good = (folder / "seed0_student0.pt").read_bytes()
    cases = {
        "truncated.pt": good[: len(good) // 2],
        "garbage.pt": b"not a checkpoint at all",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    record = torch.load(folder / "seed0_student0.pt", weights_only=True)
    torch.save({**record, "format_version": 99}, tmp_path / "future.pt")
    expected = {"truncated.pt": "not a readable checkpoint", "garbage.pt": "not a readable checkpoint",
                "foreign.pt": "not a fastalign student checkpoint", "future.pt": "checkpoint format 99",
                "missing.pt": "no such checkpoint file"}
    for name, message in expected.items():
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.load(str(tmp_path / name))
        with pytest.raises(SystemExit) as stop:
            main(["evaluate", str(tmp_path / name)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_a_data_set_of_another_width_is_refused(saved, capsys):
    folder, _ = saved
    record = checkpoint.load(str(folder / "seed0_student0.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="has 7 features per node; the student was trained"):
        checkpoint.check_data(record, 7, record["architecture"]["num_classes"], "other")
    with pytest.raises(checkpoint.CheckpointError, match="classes"):
        checkpoint.check_data(record, record["architecture"]["in_dim"], 99, "other")


def test_save_folder_is_checked_before_training(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(SystemExit):
        main(TRAIN + ["--save", str(afile)])
    err = capsys.readouterr()
    assert "is not a folder" in err.err and "epoch" not in err.out
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "x.pt"), "--out", str(tmp_path / "a.txt")])
    assert "must end in .pt2, .onnx" in capsys.readouterr().err


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    checkpoint.save(str(path), {"format": "first"})

    def broken(obj, f):
        f.write(b"half a file")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(path), {"format": "second"})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"format": "first"}
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def _train_json(folder, extra, path):
    return main(TRAIN + ["--seeds", "0", "1", "--epochs", "12", "--json", str(path)] + extra)


def _runs(path):
    runs = json.loads(path.read_text())["runs"]
    keep = ("students", "ensemble", "epochs_run", "structure_by_pair")
    return [{k: r[k] for k in keep} for r in runs]


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, lr_schedule, capsys):
    from fastalign.distill import trainer

    extra = ["--lr-schedule", lr_schedule, "--mode", "alternating"]
    whole = tmp_path / "whole.json"
    assert _train_json(tmp_path, extra + ["--save", str(tmp_path / "a")], whole) == 0
    # the same run, interrupted in seed 1's 5th epoch (seed 0 done)
    real, calls = trainer.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 12 + 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", interrupted)
    folder = tmp_path / "b"
    assert _train_json(tmp_path, extra + ["--save", str(folder)], tmp_path / "never.json") == 130
    assert "--resume" in capsys.readouterr().out
    state = torch.load(folder / checkpoint.run_state_name(1), weights_only=True)
    assert state["epoch"] == 4 and not state["done"]
    assert torch.load(folder / checkpoint.run_state_name(0), weights_only=True)["done"]
    # resumed: seed 0 is not trained again, seed 1 runs its epochs 5..12
    calls.clear()
    resumed = tmp_path / "resumed.json"
    assert _train_json(tmp_path, extra + ["--resume", str(folder)], resumed) == 0
    assert len(calls) == 12 - 4
    assert _runs(resumed) == _runs(whole)
    for name in ("seed0_student0.pt", "seed1_student1.pt"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)["student"]
        b = torch.load(folder / name, weights_only=True)["student"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_options(tmp_path, capsys):
    folder = tmp_path / "run"
    assert main(TRAIN + ["--epochs", "2", "--save", str(folder)]) == 0
    with pytest.raises(SystemExit):
        main(TRAIN + ["--epochs", "2", "--hidden", "32", "--resume", str(folder)])
    assert "another configuration (hidden: 16 then, 32 now)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(TRAIN + ["--resume", str(tmp_path / "none")])
    assert "no such folder" in capsys.readouterr().err


def test_export_with_kernels_runs_where_fastalign_is_imported(saved, tmp_path):
    folder, _ = saved
    path = folder / "seed0_student1.pt"
    program = tmp_path / "kernels.pt2"
    assert main(["export", str(path), "--out", str(program), "--keep-kernels"]) == 0
    x, edge_index, want = _student_and_graph(path, 50, 200, seed=5)
    body = ("import fastalign.ops  # registers the custom ops the program calls\n"
            f"program = torch.export.load({str(program)!r})\n"
            "assert any('fastalign' in str(n.target) for n in program.graph.nodes)\n"
            "out = program.module()(x, edge_index)\n")
    torch.testing.assert_close(_run_elsewhere(tmp_path, x, edge_index, body, without_fastalign=False), want)


def test_onnx_export_runs_in_onnxruntime_without_fastalign(saved, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    folder, _ = saved
    path = folder / "seed1_student1.pt"
    model = tmp_path / "student.onnx"
    assert main(["export", str(path), "--out", str(model)]) == 0
    assert "ONNX; matches the student within" in capsys.readouterr().out
    x, edge_index, want = _student_and_graph(path, 41, 150, seed=7)
    body = ("import onnxruntime\n"
            f"session = onnxruntime.InferenceSession({str(model)!r})\n"
            "names = [i.name for i in session.get_inputs()]\n"
            "out = torch.from_numpy(session.run(None, {names[0]: x.numpy(), names[1]: edge_index.numpy()})[0])\n")
    out = _run_elsewhere(tmp_path, x, edge_index, body, without_fastalign=True)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit):
        main(["export", str(path), "--out", str(model), "--keep-kernels"])
    assert "ONNX has no fastalign kernels" in capsys.readouterr().err
