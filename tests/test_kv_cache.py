"""The key-value cache of `generate`: reading a row in pieces, with the q, k, v rows of the
positions already read kept in a LayerCache, gives the states of reading it whole; and generation
with the cache writes, token for token, what re-reading the whole row at every step writes. Each
holds for plain attention (one tap) and for q, k, v mixed over 4 taps, whose mixing reads the
cached rows."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minivlp import (LanguageModel, LayerCache, LMConfig, encode_corpus, freeze, generate,
                     image_context, make_corpus, pretrain_lm)
from tokenizer import Tokenizer

TINY = LMConfig(vocab_size=300, context=48, width=64, depth=2, heads=4, steps=150, batch_size=16,
                warmup_steps=10)
TAPS = [1, 4]


def reread_generate(lm, context_emb, prompt, max_new_tokens, sample_temperature=0.0,
                    generator=None, stop_ids=()):
    """The reference: no cache, the whole row re-read for every new token."""
    ids = prompt
    room = lm.context - context_emb.shape[1] - prompt.shape[1] + 1
    for _ in range(min(max_new_tokens, room)):
        logits = lm.logits(lm(ids, prefix=context_emb)[:, -1]).float()
        if sample_temperature == 0:
            next_id = logits.argmax(dim=-1)
        else:
            next_id = torch.multinomial((logits / sample_temperature).softmax(-1), 1,
                                        generator=generator).squeeze(1)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        ended = torch.zeros(len(ids), dtype=torch.bool)
        for stop_id in stop_ids:
            ended |= (ids[:, prompt.shape[1]:] == stop_id).any(dim=1)
        if stop_ids and ended.all():
            break
    return ids[:, prompt.shape[1]:]


def peaked_lm(seed, taps=1):
    """A random LM with large weights (tap weights too), so that its next-token choices are clear,
    not near-ties."""
    torch.manual_seed(seed)
    lm = LanguageModel(replace(TINY, taps=taps))
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return freeze(lm)


@pytest.mark.parametrize("taps", TAPS)
@torch.no_grad()
def test_reading_a_row_in_pieces_with_the_cache_gives_the_states_of_reading_it_whole(taps):
    lm = peaked_lm(0, taps)
    prefix = torch.randn(3, 5, TINY.width)
    ids = torch.randint(0, TINY.vocab_size, (3, 20))
    whole = lm(ids, prefix=prefix)                                      # (3, 25, C)
    cache = [LayerCache() for _ in lm.blocks]
    pieces = [lm(ids[:, :7], prefix=prefix, cache=cache)]               # 5 + 7 positions
    pieces += [lm(ids[:, t:t + 1], cache=cache) for t in range(7, 12)]  # one at a time
    pieces += [lm(ids[:, 12:], cache=cache)]                            # the rest at once
    assert len(cache[0]) == 25
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_a_full_cache_refuses_positions_beyond_the_context():
    lm = peaked_lm(0)
    cache = [LayerCache() for _ in lm.blocks]
    lm(torch.zeros(1, TINY.context, dtype=torch.long), cache=cache)
    with pytest.raises(AssertionError, match="exceed the LM context"):
        lm(torch.zeros(1, 1, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("taps", TAPS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_generation_writes_what_rereading_writes_on_random_lms(seed, taps):
    lm = peaked_lm(seed, taps)
    context_emb = torch.randn(4, 6, TINY.width)
    prompt = torch.randint(0, TINY.vocab_size, (4, 3))
    assert torch.equal(generate(lm, context_emb, prompt, 30),
                       reread_generate(lm, context_emb, prompt, 30))
    # up to the context's end (48 - 6 - 3 + 1 = 40 new tokens), and with a stop id
    assert generate(lm, context_emb, prompt, 100).shape == (4, 40)
    assert torch.equal(generate(lm, context_emb, prompt, 100),
                       reread_generate(lm, context_emb, prompt, 100))
    stop = int(reread_generate(lm, context_emb, prompt, 5)[0, 2])
    assert torch.equal(generate(lm, context_emb, prompt, 30, stop_ids=(stop,)),
                       reread_generate(lm, context_emb, prompt, 30, stop_ids=(stop,)))
    sample = lambda fn: fn(lm, context_emb, prompt, 20, 1.0, torch.Generator().manual_seed(seed))
    assert torch.equal(sample(generate), sample(reread_generate))


@pytest.mark.parametrize("taps", TAPS)
def test_cached_generation_writes_what_rereading_writes_on_a_trained_lm(taps):
    """A pretrained LM continuing captions and questions from the corpus, after a prefix."""
    documents = make_corpus(400, seed=0)
    tokenizer = Tokenizer.train("\n".join(documents), TINY.vocab_size)
    torch.manual_seed(0)
    cfg = replace(TINY, taps=taps)
    lm = LanguageModel(cfg)
    stream = encode_corpus(tokenizer, documents)
    pretrain_lm(lm, stream[:-2000], stream[-2000:], cfg, torch.device("cpu"), seed=0)
    freeze(lm)
    prefix = image_context(lm, tokenizer, torch.randn(16, 4, TINY.width))   # (16, 5, C)
    rng = np.random.default_rng(0)
    rows = [tokenizer.encode("\n" + documents[int(i)].split("\n")[0][:12])[:4]
            for i in rng.integers(len(documents), size=16)]
    width = min(len(row) for row in rows)
    prompt = torch.tensor([row[:width] for row in rows])
    newline = tokenizer.encode("\n")[-1]
    ends = (newline, tokenizer.eos_id)
    cached = generate(lm, prefix, prompt, 40, stop_ids=ends)
    assert torch.equal(cached, reread_generate(lm, prefix, prompt, 40, stop_ids=ends))
    assert (cached == newline).any()                   # some rows end their line: the stop is used
