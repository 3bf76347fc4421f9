"""Capacity allocation by sensitivity: exact global budget; sensitive blocks keep more neurons."""

import pytest
import torch

from blockcert.errors import BlockCertError
from blockcert.evaluate.trajectory import teacher_trajectory
from blockcert.models.adapters import adapter_for
from blockcert.surrogate.allocate import allocate, allocate_by_sensitivity, flat_budget
from blockcert.surrogate.capacity import Capacity, importance
from blockcert.surrogate.extract import extract_block
from tests.conftest import load_teacher

FRACTION = 0.75


@pytest.mark.parametrize("budget", [3, 10, 17, 29, 30])
def test_allocation_spends_the_budget_exactly_on_the_top_scores(budget):
    widths = [10, 7, 13]
    g = torch.Generator().manual_seed(budget)
    scores = [torch.rand(w, generator=g) for w in widths]
    counts = allocate(scores, budget, floor=1)
    assert sum(counts) == budget
    assert all(1 <= n <= w for n, w in zip(counts, widths, strict=True))
    # above the floors, the kept neurons are exactly the largest remaining scores
    rest = [s.sort(descending=True).values[1:] for s in scores]
    threshold = torch.cat(rest).sort(descending=True).values[budget - len(widths) - 1 :][:1]
    if budget > len(widths):
        expected = [1 + int((r >= threshold).sum()) for r in rest]
        assert counts == expected


def test_allocation_honours_the_floor():
    scores = [torch.tensor([9.0, 8.0, 7.0, 6.0]), torch.tensor([0.1, 0.2, 0.3, 0.05])]
    assert allocate(scores, 5, floor=1) == [4, 1]
    assert allocate(scores, 5, floor=2) == [3, 2]


@pytest.mark.parametrize("budget,floor", [(2, 1), (31, 1), (6, 3), (12, 5)])
def test_infeasible_budget_is_one_line_error(budget, floor):
    with pytest.raises(BlockCertError, match="budget"):
        allocate([torch.rand(10), torch.rand(10), torch.rand(10)], budget, floor)


def _allocation(adapter, ids):
    states = teacher_trajectory(adapter, ids, 8)
    cut = Capacity(mlp_fraction=FRACTION)
    full = [extract_block(adapter, k) for k in range(adapter.num_blocks)]
    imp = [importance(full[k], [states[k]])[1] for k in range(adapter.num_blocks)]
    return allocate_by_sensitivity(
        adapter, states, lambda k: cut.build(full[k], [states[k]]), imp, FRACTION
    )


def test_a_block_made_more_sensitive_gets_more_neurons():
    ids = torch.randint(0, 256, (8, 24), generator=torch.Generator().manual_seed(2))
    plain = adapter_for(load_teacher("tiny_llama"))
    loud = adapter_for(load_teacher("tiny_llama"))
    with torch.no_grad():  # block 1's MLP now writes 6x larger updates: pruning it costs more
        loud.layer(1).mlp.down_proj.weight.mul_(6.0)
    widths = [plain.config.intermediate_size] * plain.num_blocks
    before, kl_before = _allocation(plain, ids)
    after, kl_after = _allocation(loud, ids)
    for counts in (before, after):
        assert sum(counts) == flat_budget(widths, FRACTION)
    assert kl_after[1] > kl_before[1]
    assert after[1] > before[1]
    assert after[1] > round(FRACTION * widths[1])  # more than a flat cut would keep
