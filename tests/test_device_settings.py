"""What a first GPU run would hit, checked on CPU by pretending to be a GPU host."""

import sys

import pytest
import torch

from chameleons.errors import UserError
from chameleons.model_setup import device_policy


@pytest.fixture
def gpu_host(monkeypatch):
    def make(count):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return make


def test_plain_python_on_a_multi_gpu_host_is_refused(gpu_host, monkeypatch):
    gpu_host(4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError, match="torchrun --nproc_per_node=4"):
        device_policy(False, "sdpa", "padded")
    monkeypatch.setenv("LOCAL_RANK", "0")  # started by torchrun: fine
    assert device_policy(False, "sdpa", "padded").bf16 is True


def test_explicit_flash_attention_without_the_package_is_one_error(gpu_host, monkeypatch):
    gpu_host(1)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails
    with pytest.raises(UserError, match="flash-attn package is not installed"):
        device_policy(False, "flash_attention_2", "packed")
    auto = device_policy(False, "auto", "padded")
    assert auto.attn_implementation == "sdpa" and auto.notices
