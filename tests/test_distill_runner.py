"""experiments/distill/sweep.py: one JSON per configuration, resumable, and --extend
merging new seeds into an existing configuration's JSON."""

import importlib.util
import json
import os

import pytest

RUNNER = os.path.join(os.path.dirname(__file__), "..", "experiments", "distill", "sweep.py")


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("sweep", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep(runner, monkeypatch, out, *extra):
    argv = ["sweep.py", "--datasets", "synthetic", "--layers", "2", "--ks", "1",
            "--variants", "independent", "--epochs", "2", "--backend", "torch", "--out", str(out), *extra]
    monkeypatch.setattr("sys.argv", argv)
    assert runner.main() == 0
    with open(out / "synthetic_L2_K1_independent.json") as f:
        return json.load(f)


def test_extend_merges_new_seeds(runner, monkeypatch, tmp_path):
    first = sweep(runner, monkeypatch, tmp_path, "--seeds", "1")
    assert first["seeds"] == [0] and "extended_by" not in first
    # without --extend an existing configuration is skipped
    assert sweep(runner, monkeypatch, tmp_path, "--seeds", "3") == first
    merged = sweep(runner, monkeypatch, tmp_path, "--seeds", "3", "--extend")
    assert merged["seeds"] == [0, 1, 2]
    assert merged["runs"][0] == first["runs"][0]
    assert [e["seeds"] for e in merged["extended_by"]] == [[1, 2]]
    assert merged["command"] == first["command"] and merged["variant"] == "independent"
    tests = [r["students"][0]["test"] for r in merged["runs"]]
    assert merged["mean_test_acc"] == pytest.approx(sum(tests) / 3)
    # the seeds it already has are not run again
    assert sweep(runner, monkeypatch, tmp_path, "--seed-list", "1", "2", "--extend") == merged


def test_extend_refuses_another_configuration(runner, monkeypatch, tmp_path):
    sweep(runner, monkeypatch, tmp_path, "--seeds", "1")
    with pytest.raises(SystemExit, match="dropout"):
        sweep(runner, monkeypatch, tmp_path, "--seeds", "2", "--extend", "--dropout", "0.3")


def test_extend_takes_options_added_later_at_their_defaults(runner, monkeypatch, tmp_path):
    first = sweep(runner, monkeypatch, tmp_path, "--seeds", "1")
    path = tmp_path / "synthetic_L2_K1_independent.json"
    # a JSON written before --residual and --feature-pairs existed
    del first["config"]["residual"], first["config"]["weights"]["feature_pairs"]
    path.write_text(json.dumps(first))
    merged = sweep(runner, monkeypatch, tmp_path, "--seeds", "2", "--extend")
    assert merged["seeds"] == [0, 1]
    # an option the old JSON lacks, now set away from its default, is a difference
    path.write_text(json.dumps(first))
    with pytest.raises(SystemExit, match=r"weights\.feature_pairs"):
        sweep(runner, monkeypatch, tmp_path, "--seeds", "2", "--extend", "--feature-pairs", "hidden")


def test_config_differences_names_nested_keys(runner):
    defaults = {"a": 1, "w": {"x": 0, "y": "all"}}
    assert runner.config_differences({"a": 1, "w": {"x": 0}}, {"a": 1, "w": {"x": 0, "y": "all"}}, defaults) == []
    assert runner.config_differences({"a": 2, "w": {"x": 0}}, {"a": 1, "w": {"x": 1, "y": "hidden"}},
                                     defaults) == ["a", "w.x", "w.y"]


def test_deadline_is_the_next_such_time(runner):
    import datetime as dt
    now = dt.datetime(2026, 11, 28, 23, 10, tzinfo=dt.timezone.utc)
    assert runner.next_utc_time("01:20", now) == dt.datetime(2026, 11, 29, 1, 20, tzinfo=dt.timezone.utc)
    assert runner.next_utc_time("23:40", now) == dt.datetime(2026, 11, 28, 23, 40, tzinfo=dt.timezone.utc)
    assert runner.next_utc_time(None, now) is None


def test_summary_names_the_options_away_from_their_defaults(runner, monkeypatch, tmp_path):
    sweep(runner, monkeypatch, tmp_path / "runs", "--seeds", "1")
    sweep(runner, monkeypatch, tmp_path / "runs_wd", "--seeds", "1", "--dropout", "0.3", "--patience", "5")
    rows = [line for line in runner.summarize(str(tmp_path / "runs")).splitlines() if "synthetic" in line]
    assert len(rows) == 2
    assert sorted(row.split("|")[3].strip() for row in rows) == [
        "independent (dropout=0.3, epochs=2, patience=5)", "independent (epochs=2)"]  # the sweep trains 2 epochs
