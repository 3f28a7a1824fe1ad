"""What a first GPU run would hit, checked on CPU by pretending to be a GPU host."""

import sys

import pytest
import torch

from chameleons.core.errors import UserError
from chameleons.train.model_setup import choose_attention, device_policy


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
    with pytest.raises(UserError, match="no usable flash-attn 2"):
        device_policy(False, "flash_attention_2", "packed")
    auto = device_policy(False, "auto", "padded")
    assert auto.attn_implementation == "sdpa" and auto.notices


@pytest.mark.parametrize("requested, on_gpu, flash2, disabled, batching, expected", [
    ("auto", True, True, False, "packed", "flash_attention_2"),
    ("auto", True, False, False, "packed", "sdpa_varlen"),
    ("auto", True, True, True, "packed", "sdpa_varlen"),
    ("auto", True, False, False, "padded", "sdpa"),
    ("auto", False, True, False, "packed", "sdpa_varlen"),  # CPU: whatever is installed
    ("auto", False, False, False, "padded", "sdpa"),
    ("flash_attention_2", False, True, False, "packed", "sdpa_varlen"),
    ("sdpa", True, True, False, "padded", "sdpa"),
    ("eager", True, True, False, "padded", "eager"),
])
def test_the_attention_kernel_is_a_function_of_request_device_and_install(requested, on_gpu, flash2, disabled,
                                                                          batching, expected):
    attn, notices = choose_attention(requested, on_gpu, flash2, disabled, batching)
    assert attn == expected
    assert bool(notices) == (requested != "sdpa" and requested != "eager" and on_gpu and attn != "flash_attention_2"
                             or requested == "flash_attention_2" and attn != "flash_attention_2")


def _fake_install(root, distribution, version):
    """A package `flash_attn` installed by `distribution` (as flash-attn-4 installs it)."""
    (root / "flash_attn").mkdir(parents=True)
    (root / "flash_attn" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = root / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "top_level.txt").write_text("flash_attn\n")


@pytest.mark.parametrize("distribution, version, usable", [("flash-attn-4", "4.0.0b4", False),
                                                          ("flash-attn", "2.8.3", True)])
def test_a_flash_attn_4_install_is_not_flash_attention_2(tmp_path, monkeypatch, gpu_host, distribution, version,
                                                          usable):
    """With only flash-attn-4 installed `import flash_attn` works, and transformers refuses it at
    model load, after the run folder is written: the policy asks transformers' own check, so
    `auto` falls back with a notice (a real flash-attn 2 is taken)."""
    from transformers.utils import import_utils

    gpu_host(1)
    _fake_install(tmp_path, distribution, version)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(import_utils, "is_torch_cuda_available", lambda: True)
    for cached in (import_utils.is_flash_attn_2_available, import_utils._package_distribution_mapping):
        cached.cache_clear()
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    try:
        import flash_attn  # noqa: F401  # importable either way
        policy = device_policy(False, "auto", "packed")
    finally:
        for cached in (import_utils.is_flash_attn_2_available, import_utils._package_distribution_mapping):
            cached.cache_clear()
        sys.modules.pop("flash_attn", None)
    assert policy.attn_implementation == ("flash_attention_2" if usable else "sdpa_varlen")
    assert bool(policy.notices) != usable
