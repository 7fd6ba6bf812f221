"""bench/distill_sweep.py: one records row per configuration, resumable, and --extend
appending the configuration merged with its new seeds."""

import json

import pytest

from bench_scripts import load_script


@pytest.fixture(scope="module")
def runner():
    return load_script("distill_sweep")


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def sweep(runner, monkeypatch, out, *extra, series="rounds"):
    """Run the sweep into the records file ``out`` (a folder: its rounds.jsonl) and return
    the configuration's latest row."""
    path = out / "rounds.jsonl" if out.suffix != ".jsonl" else out
    argv = ["distill_sweep.py", "--datasets", "synthetic", "--layers", "2", "--ks", "1", "--variants", "independent",
            "--epochs", "2", "--backend", "torch", "--records", str(path), "--series", series, *extra]
    monkeypatch.setattr("sys.argv", argv)
    assert runner.main() == 0
    return rows(path)[-1]


def test_extend_merges_new_seeds(runner, monkeypatch, tmp_path):
    first = sweep(runner, monkeypatch, tmp_path, "--seeds", "1")
    assert first["seeds"] == [0] and "extends" not in first
    assert {"date", "commit", "machine", "command"} <= set(first) and "distill_sweep.py" in first["command"]
    # without --extend an existing configuration is skipped: no row is added
    assert sweep(runner, monkeypatch, tmp_path, "--seeds", "3") == first
    assert len(rows(tmp_path / "rounds.jsonl")) == 1
    merged = sweep(runner, monkeypatch, tmp_path, "--seeds", "3", "--extend")
    assert merged["seeds"] == [0, 1, 2] and len(rows(tmp_path / "rounds.jsonl")) == 2
    assert merged["runs"][0] == first["runs"][0]
    assert [e["seeds"] for e in merged["extends"]] == [[0]]
    assert merged["extends"][0]["command"] == first["command"] and merged["variant"] == "independent"
    tests = [r["students"][0]["test"] for r in merged["runs"]]
    assert merged["mean_test_acc"] == pytest.approx(sum(tests) / 3)
    # the seeds it already has are not run again
    assert sweep(runner, monkeypatch, tmp_path, "--seed-list", "1", "2", "--extend") == merged
    assert len(rows(tmp_path / "rounds.jsonl")) == 2


def test_extend_refuses_another_configuration(runner, monkeypatch, tmp_path):
    sweep(runner, monkeypatch, tmp_path, "--seeds", "1")
    with pytest.raises(SystemExit, match="dropout"):
        sweep(runner, monkeypatch, tmp_path, "--seeds", "2", "--extend", "--dropout", "0.3")


def test_extend_takes_options_added_later_at_their_defaults(runner, monkeypatch, tmp_path):
    first = sweep(runner, monkeypatch, tmp_path, "--seeds", "1")
    path = tmp_path / "rounds.jsonl"
    # a row written before --residual and --feature-pairs existed
    del first["config"]["residual"], first["config"]["weights"]["feature_pairs"]
    path.write_text(json.dumps(first) + "\n")
    merged = sweep(runner, monkeypatch, tmp_path, "--seeds", "2", "--extend")
    assert merged["seeds"] == [0, 1]
    # an option the old row lacks, now set away from its default, is a difference
    path.write_text(json.dumps(first) + "\n")
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
    path = tmp_path / "rounds.jsonl"
    sweep(runner, monkeypatch, path, "--seeds", "1")
    sweep(runner, monkeypatch, path, "--seeds", "1", "--dropout", "0.3", "--patience", "5", series="rounds_wd")
    table = [line for line in runner.summarize(rows(path)).splitlines() if "synthetic" in line]
    assert len(table) == 2
    assert sorted(row.split("|")[3].strip() for row in table) == [
        "independent (dropout=0.3, epochs=2, patience=5)", "independent (epochs=2)"]  # the sweep trains 2 epochs
