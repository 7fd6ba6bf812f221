"""The examples and docstring examples of fastalign.nn run (on a small synthetic graph)."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest

import fastalign.nn.feature_align_loss
import fastalign.nn.gcn_conv
import fastalign.nn.sage_conv
import fastalign.nn.structure_align_loss

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("module", [fastalign.nn.gcn_conv, fastalign.nn.sage_conv, fastalign.nn.structure_align_loss,
                                    fastalign.nn.feature_align_loss])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model,conv", [("gcn", "gcn_conv.GCNConv"), ("sage", "sage_conv.SAGEConv"),
                                        ("gin", "gin_conv.GINConv"), ("gat", "gat_conv.GATConv")])
def test_pyg_swap_example(tmp_path, capsys, model, conv):
    pytest.importorskip("torch_geometric")
    example = _load("pyg_swap")
    # an empty root: the synthetic graph is used
    assert example.main(["--root", str(tmp_path), "--epochs", "3", "--model", model]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out
    assert f"fastalign.nn.{conv}" in out
    relative = float(out.split("relative to the largest output: ")[1].split(")")[0])
    # float32 sums in another order; GAT's logits then go through exp, where a logit's
    # absolute rounding error (~1e-7 of its size) becomes a relative error of the attention
    assert relative < (1e-5 if model == "gat" else 1e-6)
    name = conv.split(".")[1]
    assert f"PyG {name}" in out and f"fastalign {name}" in out and "test acc" in out


def test_align_loss_example(tmp_path, capsys):
    example = _load("align_loss")
    assert example.main(["--root", str(tmp_path), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "epoch   2:" in out and "structure" in out and "feature" in out


def test_examples_refuse_a_data_set_they_cannot_find(tmp_path, capsys):
    example = _load("align_loss")
    for spelling in ("CiteSeer", "citeseer"):  # as PyG spells it, or as `fastalign train` does
        with pytest.raises(SystemExit, match="CiteSeer not found"):
            example.main(["--root", str(tmp_path), "--dataset", spelling, "--epochs", "1"])
    with pytest.raises(SystemExit):  # not a name the examples know: argparse refuses it
        example.main(["--root", str(tmp_path), "--dataset", "Reddit", "--epochs", "1"])
    assert "'Reddit' is not one of auto, synthetic, Cora, CiteSeer, PubMed" in capsys.readouterr().err
