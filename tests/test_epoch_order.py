"""Each epoch's order depends on the seed, the epoch and the samples per optimizer step only:
4 x 4 and 16 x 1 (and 8 x 2) on two ranks train the same rows in every optimizer step, in every
epoch, including an epoch's last, partial step. Driven through accelerate's own sharding
(`prepare_data_loader` with the arguments HF Trainer passes) and the Trainer's way of fetching
`gradient_accumulation_steps` micro-batches per step; no model.
"""

import pytest
import torch
from accelerate.data_loader import prepare_data_loader

from chameleons.text.batching import EpochSampler, epoch_order

WORLD, PER_STEP, SEED = 2, 32, 42


class Rows(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def rows_per_step(n, batch_size, accumulation, sampler_of, epochs=2):
    """Per epoch, the set of rows each optimizer step trains on, all ranks together."""
    loaders = []
    for rank in range(WORLD):
        loader = torch.utils.data.DataLoader(Rows(n), batch_size=batch_size, sampler=sampler_of(Rows(n)),
                                             collate_fn=list)
        loaders.append(prepare_data_loader(loader, num_processes=WORLD, process_index=rank, put_on_device=False,
                                           use_seedable_sampler=True, data_seed=SEED, even_batches=True))
    out = []
    for epoch in range(epochs):
        steps = []
        for loader in loaders:
            loader.set_epoch(epoch)
            batches = iter(loader)
            n_batches = len(loader)
            n_steps = -(-n_batches // accumulation)
            mine = [sum((next(batches) for _ in range(min(accumulation, n_batches - s * accumulation))), [])
                    for s in range(n_steps)]
            steps = [a + b for a, b in zip(steps, mine)] if steps else mine
        out.append([sorted(s) for s in steps])
    return out


@pytest.mark.parametrize("lengths", [None, [10 + (i * 37) % 90 for i in range(100)]])
def test_every_epoch_trains_the_same_rows_per_step_in_every_layout(lengths):
    def ours(ds, batch_size, accumulation):
        return EpochSampler(ds, PER_STEP, seed=SEED, lengths=(lambda: lengths) if lengths else None,
                            group_size=batch_size * accumulation)

    layouts = [(4, 4), (16, 1), (8, 2)]
    runs = [rows_per_step(100, b, a, lambda ds, b=b, a=a: ours(ds, b, a)) for b, a in layouts]
    assert runs[0] == runs[1] == runs[2]
    for steps in runs[0]:
        assert len(steps) == 4 and all(len(s) == PER_STEP for s in steps)
        assert set().union(*steps) == set(range(100))  # every row in every epoch; 28 repeated to fill the last step
    assert runs[0][0] != runs[0][1]  # epochs differ


def test_the_stock_sampler_parts_the_layouts_at_an_epochs_last_step():
    """What the fix is for: with HF's RandomSampler the last step of 100 rows trains 8 rows for
    4 x 4 (one micro-batch per rank) and 32 for 16 x 1 (28 of them wrapped round)."""
    seed_runs = rows_per_step(100, 4, 4, torch.utils.data.RandomSampler)
    new_runs = rows_per_step(100, 16, 1, torch.utils.data.RandomSampler)
    assert seed_runs[0][:3] == new_runs[0][:3]
    assert (len(seed_runs[0][3]), len(new_runs[0][3])) == (8, 32)


def test_epoch_order_is_the_seeded_permutation_cycled_to_whole_steps():
    order = epoch_order(10, 4, seed=5, epoch=1)
    g = torch.Generator()
    g.manual_seed(6)
    permutation = torch.randperm(10, generator=g).tolist()
    assert order == permutation + permutation[:2]
    assert epoch_order(8, 4, seed=5, epoch=1) != epoch_order(8, 4, seed=5, epoch=2)
    assert epoch_order(3, 8, seed=0, epoch=0) == (epoch_order(3, 3, seed=0, epoch=0) * 3)[:8]
    assert epoch_order(0, 8, seed=0, epoch=0) == []
    assert len(EpochSampler(Rows(10), 4)) == 12
