"""--precision: auto chooses by what the hardware computes natively (checked here by faking the
device's capabilities, so it runs on any CPU), fp16 trains with a gradient scaler, and a run
records the precision and environment it used."""

import pytest
import torch

import minivlp
from minivlp import (AlignConfig, LanguageModel, LMConfig, compute_dtype, encode_corpus,
                     gradient_scaler, make_corpus, pretrain_lm)
from tokenizer import Tokenizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("cuda_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_takes_bf16_only_where_it_is_native(monkeypatch, cuda_bf16, expected):
    asked = {}
    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return cuda_bf16 or including_emulation   # emulated bf16 is 'supported' on any GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert compute_dtype(CUDA, "auto") == expected
    assert asked["including_emulation"] is False
    assert gradient_scaler(CPU, {torch.bfloat16: "bf16", torch.float16: "fp16"}[expected]) \
        .is_enabled() == (expected == torch.float16)


@pytest.mark.parametrize("avx512_bf16, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_takes_bf16_only_with_avx512_bf16(monkeypatch, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert compute_dtype(CPU, "auto") == expected
    assert not gradient_scaler(CPU, "auto").is_enabled()               # never fp16 on a CPU


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_an_explicit_precision_is_taken_as_given(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert [compute_dtype(device, p) for p in ("float32", "bf16", "fp16")] == \
        [torch.float32, torch.bfloat16, torch.float16]


def test_autocast_computes_matmuls_in_the_chosen_dtype_and_float32_means_no_autocast():
    x = torch.randn(4, 4)
    for precision, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16),
                             ("fp16", torch.float16)):
        with minivlp.autocast(CPU, precision):
            assert (x @ x).dtype == dtype


def test_fp16_pretraining_with_the_scaler_learns_like_float32():
    """The scaler's path (scale, unscale before clipping, step, update) on the CPU's fp16."""
    documents = make_corpus(200, seed=0)
    tokenizer = Tokenizer.train("\n".join(documents), 280)
    stream = encode_corpus(tokenizer, documents)
    cfg = LMConfig(vocab_size=280, context=32, width=32, depth=1, heads=2, steps=30,
                   batch_size=8, warmup_steps=3)
    losses = {}
    for precision in ("float32", "fp16"):
        torch.manual_seed(0)
        lm = LanguageModel(cfg)
        history = pretrain_lm(lm, stream[:-500], stream[-500:], cfg, CPU, seed=0,
                              precision=precision)
        losses[precision] = history["held_out_loss"]
    start = torch.log(torch.tensor(280.0)).item()                     # a uniform guess: ln V
    assert losses["float32"] < start - 1.5                              # it learned
    assert losses["fp16"] == pytest.approx(losses["float32"], abs=0.1)
