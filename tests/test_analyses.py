"""Cross-cell analyses against hand-built dictionaries."""

from __future__ import annotations

import math

import torch

from engine.analyses import select, stable_count


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def test_stable_count_by_hand():
    e1, e2, e3 = [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]
    c = math.cos(math.radians(30))  # 0.866 < 0.9: not a match
    near_e1 = [1.0, 0.1, 0]  # cos with e1 = 0.995
    small = unit(e1, e2, [c, 0.5, 0], near_e1, e3)
    larger = unit(e1, e2, [0, 0.6, 0.8])
    live = torch.tensor([True, True, True, True, False])
    # e1 and e2 match; the 30-degree atom does not; near_e1 duplicates e1; e3 is dead
    assert stable_count(small, live, larger) == 2
    assert stable_count(small, torch.zeros(5, dtype=torch.bool), larger) == 0
    assert stable_count(small, torch.ones(5, dtype=torch.bool), unit(e3)) == 1


def test_stable_count_ignores_sign_flips():
    small = unit([1.0, 0, 0])
    assert stable_count(small, torch.tensor([True]), unit([-1.0, 0, 0])) == 0


def test_select_keeps_the_named_groups():
    metrics = {"mmcs_truth": 0.9, "recovered_0.9": 3, "dead": 1, "dead_frac": 0.1, "l0": 2.0, "fvu": 0.1}
    assert select(metrics, ("dead",)) == {"dead": 1, "dead_frac": 0.1}
    assert select(metrics, ("mmcs_truth", "l0")) == {"mmcs_truth": 0.9, "recovered_0.9": 3, "l0": 2.0}
