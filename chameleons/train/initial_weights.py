"""A sweep's runs start from the same model: the first run's weights as each rank holds them before
training (its ZeRO-3 partitions) are kept in host memory, and a later run with the same model,
dtype, world size and (for a random-init model) training seed builds the model without reading
its files and copies them in. A pretrained 30B model is minutes of reading for rank 0; the copy
is each rank's own partition, about 2 bytes a parameter per node in bf16."""

import json
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class InitialWeights:
    key: str
    state: dict  # parameter name -> this rank's partition, on the CPU


def key_of(config, dtype, world_size: int) -> str:
    """What the initial weights depend on (a random-init model's also on its seed)."""
    m = config.model
    return json.dumps([asdict(m), str(dtype), world_size, config.training.seed if m.random_init else None],
                      sort_keys=True, default=str)


def capture(model, key: str) -> InitialWeights:
    return InitialWeights(key, {name: p.ds_tensor.detach().to("cpu", copy=True)
                                for name, p in model.named_parameters()})


def restore(model, kept: InitialWeights) -> None:
    params = dict(model.named_parameters())
    if set(params) != set(kept.state):
        raise RuntimeError(f"initial weights: parameters differ from the model's "
                           f"({sorted(set(params) ^ set(kept.state))[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            p.ds_tensor.data.copy_(kept.state[name])
