"""bench/distill_paired.py: the per-seed pairing, the sign test and the summary."""

import math

import pytest

from bench_scripts import load_script

paired = load_script("distill_paired")


def result(variant, tests, vals, layers=2, students=2, kl=None):
    """A trainer result with per-seed scores (each student gets the seed's score)."""
    runs = [{"seed": s, "students": [{"test": t, "val": v}] * students} for s, (t, v) in enumerate(zip(tests, vals))]
    return {"dataset": "cora", "variant": variant, "config": {"layers": layers, "students": students},
            "runs": runs, "structure_by_pair": [{"pair": [0, 1], "mean": kl}] if kl else []}


def test_sign_test_p():
    assert paired.sign_test_p(0, 0) == 1.0
    assert paired.sign_test_p(10, 0) == pytest.approx(2 / 2**10)
    assert paired.sign_test_p(5, 5) == 1.0
    # 8 of 10: P(X <= 2) = (1 + 10 + 45) / 1024, doubled
    assert paired.sign_test_p(8, 2) == pytest.approx(2 * 56 / 1024)
    assert paired.sign_test_p(2, 8) == paired.sign_test_p(8, 2)


def test_compare_pairs_by_seed():
    base = result("independent", [0.80, 0.70, 0.75], [0.5] * 3)
    other = result("sigma100", [0.81, 0.72, 0.74], [0.5] * 3)
    c = paired.compare(base, other)
    diffs = [0.01, 0.02, -0.01]
    assert c["seeds"] == 3 and c["wins"] == 2 and c["losses"] == 1
    assert c["diff"] == pytest.approx(sum(diffs) / 3)
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert c["se"] == pytest.approx(sd / math.sqrt(3))


def test_summary_chooses_the_auto_weight_on_validation():
    rows = {
        "independent": result("independent", [0.80] * 4, [0.70] * 4),
        "sigma100": result("sigma100", [0.80] * 4, [0.70] * 4, kl=5e-5),
        "auto-w1": result("auto-w1", [0.90] * 4, [0.71] * 4, kl=5e-3),  # best test, not best val
        "auto-w10": result("auto-w10", [0.82] * 4, [0.75] * 4, kl=4e-3),
    }
    stale = result("auto-w10", [0.10] * 4, [0.10] * 4)  # measured again below: the later row counts
    table = paired.summarize([stale] + list(rows.values()))
    rows = table.splitlines()
    chosen = [r for r in rows if "chosen on val" in r]
    assert len(chosen) == 1 and "auto-w10" in chosen[0] and "+2.00" in chosen[0]
    assert any("| sigma100 |" in r and "+0.00" in r and "5.0e-05" in r for r in rows)
    vs = [r for r in rows if "auto-w10 vs sigma100" in r]
    assert len(vs) == 1 and "+2.00" in vs[0] and "4 / 0" in vs[0]
