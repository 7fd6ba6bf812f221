"""bench/records.py (the JSON Lines records of every benchmark family) and
bench/tables.py (the docs' tables made from them)."""

import json
import re

import pytest

from bench_scripts import BENCH, load_script

records = load_script("records")
tables = load_script("tables")


def test_append_stamps_each_row_and_keeps_earlier_rows(tmp_path, monkeypatch):
    path = tmp_path / "family.jsonl"
    monkeypatch.setenv("FASTALIGN_DATA", str(tmp_path / "data"))
    monkeypatch.setattr("sys.argv", [str(BENCH / "distill_paired.py"), "--layers", "2", "--root", "/x/my data",
                                     "--out", str(tmp_path / "data" / "o.json"), "--name", "a b"])
    first = records.append(str(path), {"x": 1, "nan": float("nan")})
    records.append(str(path), {"x": 2, "date": "given"})
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == first
    assert list(first)[:4] == ["date", "commit", "machine", "command"]
    # the script relative to the repository, no path of this machine, quoted where needed
    assert first["command"] == "python bench/distill_paired.py --layers 2 --root DATA --out DATA/o.json --name 'a b'"
    assert first["nan"] is None and "CPUs" in first["machine"] and "load" in first["machine"]
    assert records.read(str(path))[1]["date"] == "given"  # a row's own value wins
    assert records.read(str(tmp_path / "none.jsonl")) == []
    assert records.append("", {"x": 3})["x"] == 3 and records.read("") == []  # --records '': no file


def test_latest_keeps_the_last_row_of_each_configuration():
    rows = [{"k": 1, "v": "a"}, {"k": 2, "v": "b"}, {"k": 1, "v": "c"}]
    assert records.latest(rows, lambda r: r["k"]) == {1: {"k": 1, "v": "c"}, 2: {"k": 2, "v": "b"}}


def test_every_record_says_when_where_and_how_it_was_measured():
    files = sorted((BENCH / "results").glob("*"))
    assert files and all(p.suffix == ".jsonl" for p in files), files
    machine_path = re.compile(r"(?<![\w.])/(home|root|tmp|work|mnt|scratch)/")
    for path in files:
        assert not machine_path.search(path.read_text()), f"{path.name} names a path of a machine"
        for row in records.read(str(path)):
            assert row["date"] and row["machine"], (path.name, row.get("source"))
            assert "commit" in row and "command" in row, (path.name, row.get("source"))


def test_the_docs_tables_are_what_the_records_give():
    assert tables.main(["--check"]) == 0


def test_a_changed_table_is_found_and_an_unknown_one_refused():
    text = "intro\n<!-- table: distill-paired -->\n| stale |\n<!-- /table -->\nafter\n"
    new = tables.render(text)
    assert new != text and new.startswith("intro\n<!-- table: distill-paired -->\n| dataset |")
    assert new.endswith("<!-- /table -->\nafter\n") and tables.render(new) == new
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        tables.render("<!-- table: nope -->\n<!-- /table -->")
