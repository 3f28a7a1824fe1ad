"""Paired fidelity differences between settings (chameleons/evaluate/fidelity_compare.py)."""

import random

import pytest

from chameleons.evaluate.fidelity_compare import compare_settings, holm, item_scores, paired_difference


def _runs(base: dict, shift: float, seeds: int, noise: float, seed: int) -> list:
    rng = random.Random(seed)
    return [{i: min(1.0, max(0.0, s + shift + rng.gauss(0, noise))) for i, s in base.items()} for _ in range(seeds)]


@pytest.fixture(scope="module")
def items():
    rng = random.Random(0)
    return {f"r{k}.c0.i0": rng.random() for k in range(200)}


def test_a_real_difference_is_found_and_none_is_not(items):
    better = _runs(items, 0.08, 3, 0.1, 1)
    same_a, same_b = _runs(items, 0.0, 3, 0.1, 2), _runs(items, 0.0, 3, 0.1, 3)
    real = paired_difference(better, same_a)
    assert real["items"] == 200 and real["ci95"][0] > 0 and real["p"] < 0.01
    assert real["difference"] == pytest.approx(0.08, abs=0.02)
    null = paired_difference(same_a, same_b)
    assert null["ci95"][0] < 0 < null["ci95"][1] and null["p"] > 0.05


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert holm([0.2]) == [0.2]


def test_settings_are_compared_pairwise_with_holm(items):
    settings = {"context_only": _runs(items, 0.08, 3, 0.1, 4), "profile_only": _runs(items, 0.0, 3, 0.1, 5),
                "history_only": _runs(items, 0.0, 3, 0.1, 6)}
    pairs = {(p["a"], p["b"]): p for p in compare_settings(settings)}
    assert len(pairs) == 3
    assert pairs[("context_only", "profile_only")]["real"] and pairs[("context_only", "history_only")]["real"]
    assert not pairs[("history_only", "profile_only")]["real"]
    assert all(p["p_holm"] >= p["p"] for p in pairs.values())


def test_item_scores_read_the_first_continuations_rank():
    record = {"summary": {"classifier": {"characters": 5}},
              "items": [{"sample_id": "a", "attributed": True, "generated": [{"rank_all": 1}, {"rank_all": 5}]},
                        {"sample_id": "b", "attributed": True, "generated": [{"rank_all": 5}]},
                        {"sample_id": "c", "attributed": False, "generated": [{"rank_all": None}]}]}
    assert item_scores(record) == {"a": 1.0, "b": 0.0}
