"""Where the time goes, measured on this machine (nothing is changed by running it).

    python tests/benchmarks/speed.py [--device auto|cpu|cuda] [--precision auto|float32|bf16|fp16]

1. The limit: matmul throughput (FLOP/s) of this machine's device, measured here, in the precision
   the training steps below compute in (train.py's --device and --precision: auto takes bf16 where
   the hardware computes it natively, fp16 on older GPUs, float32 on other CPUs).
2. Model FLOPs utilisation of LM pretraining and of alignment: FLOPs per step counted from the
   model's shapes (a forward matmul of (m, k) x (k, n) is 2mkn FLOPs, backward twice that),
   divided by the measured time per step, divided by the limit of the same precision.
3. Side by side: (a) cached text embeddings against recomputing them through the frozen LM every
   step (what freezing saves, §4.4); (b) the hand-written info_nce against the F.cross_entropy
   formulation, forward + backward; (c) attention written out against scaled_dot_product_attention;
   (d) generating captions with generate's key-value cache against re-reading the whole row for
   every new token.
4. Two choices: the embedder's channels-last layout against the default one, and --compile
   (torch.compile) against eager training steps, with the time compiling takes; on CUDA also
   torch.compile's "reduce-overhead" mode, which replays each step as one CUDA graph.
5. The alignment step against the batch size N: where a step is bound by launching work rather
   than by arithmetic (small models on a GPU), images/s grow with N.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from minivlp import (AlignConfig, CausalSelfAttention, LanguageModel, LMConfig,  # noqa: E402
                     VisualEmbedder, WorldConfig, adamw, autocast, compute_dtype, generate,
                     gradient_scaler, info_nce, reread_tokens, reread_features, resolve_device)
from tokenizer import Tokenizer  # noqa: E402


def seconds(work, repeat=10, warmup=2, fastest=False):
    """Median wall time of one call of work(), or with fastest=True the shortest. CUDA runs work
    asynchronously: wait for the device before reading the clock."""
    wait = torch.cuda.synchronize if torch.cuda.is_initialized() else lambda: None
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeat):
        wait()
        start = time.perf_counter()
        work()
        wait()
        times.append(time.perf_counter() - start)
    return min(times) if fastest else sorted(times)[len(times) // 2]


def matmul_limit(dtype, device):
    """FLOP/s of square matmuls at their fastest: the most this device reaches, which a passing
    load on a shared machine can only lower. On a GPU ten large products a timing, so that the
    launch and the wait don't count."""
    n, products = (4096, 10) if device.type == "cuda" else (1024, 1)
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    work = lambda: [a @ b for _ in range(products)]
    return products * 2 * n ** 3 / seconds(work, repeat=20, fastest=True)


def lm_step_flops(cfg):
    """Matmul FLOPs of one pretraining step (forward + backward = 3 x forward)."""
    tokens, C, T = cfg.batch_size * cfg.context, cfg.width, cfg.context
    per_layer = 2 * tokens * C * (3 * C + C + 8 * C) + 2 * 2 * cfg.batch_size * T * T * C
    head = 2 * tokens * C * cfg.vocab_size
    return 3 * (cfg.depth * per_layer + head)


def embedder_step_flops(embedder, batch_size, image_size):
    """Conv and linear FLOPs of one alignment step, counted with forward hooks."""
    total = [0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2 * output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2 * output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in embedder.modules()]
    device = next(embedder.parameters()).device
    embedder(torch.zeros(batch_size, 3, image_size, image_size, dtype=torch.uint8, device=device))
    for hook in hooks:
        hook.remove()
    return 3 * total[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "float32", "bf16", "fp16"], default="auto")
    args = parser.parse_args()
    try:
        device, precision = resolve_device(args.device), args.precision
    except ValueError as error:  # --device cuda on a machine without one
        parser.error(str(error))
    torch.manual_seed(0)
    dtype = compute_dtype(device, precision)
    limit = matmul_limit(dtype, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"1. this machine ({where}): {str(dtype).removeprefix('torch.')} matmul "
          f"{limit / 1e9:.1f} GFLOP/s; the training steps below compute in it")

    cfg = LMConfig()
    lm = LanguageModel(cfg).to(device)
    optimizer = adamw(lm.parameters(), cfg.lr, cfg.weight_decay, device)
    ids = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.context + 1), device=device)

    def train_step(loss, optimizer, scaler, clip=None):
        """One update as training makes it; the scaler is on only for fp16, one a model."""
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(clip, cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    lm_scaler = gradient_scaler(device, precision)

    def lm_step(model=lm, optimizer=optimizer):  # binds this optimizer: the name is reused below
        with autocast(device, precision):
            logits = lm.logits(model(ids[:, :-1]))
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        train_step(loss, optimizer, lm_scaler, clip=lm.parameters())

    t = seconds(lm_step)
    print(f"2. LM pretraining: {t * 1e3:.1f} ms/step, "
          f"{cfg.batch_size * cfg.context / t:,.0f} tokens/s, "
          f"model FLOPs utilisation {lm_step_flops(cfg) / t / limit:.1%}")
    align_cfg, world_cfg = AlignConfig(), WorldConfig()
    embedder = VisualEmbedder(world_cfg.image_size, cfg.width, align_cfg.prefix_tokens).to(device)
    optimizer = adamw(embedder.parameters(), align_cfg.lr, align_cfg.weight_decay, device)
    size = world_cfg.image_size

    def batch(n):
        """n random images and n caption vectors, on the device."""
        return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device),
                torch.randn(n, cfg.width, device=device))

    images, text_emb = batch(align_cfg.batch_size)

    def align_step(model=embedder, optimizer=optimizer, scaler=gradient_scaler(device, precision),
                   images=images, text_emb=text_emb):
        with autocast(device, precision):
            image_emb, _ = model(images)
        train_step(info_nce(image_emb.float(), text_emb, 0.07), optimizer, scaler)

    t = seconds(align_step)
    flops = embedder_step_flops(embedder, align_cfg.batch_size, size)
    print(f"   alignment (InfoNCE only): {t * 1e3:.1f} ms/step, "
          f"{align_cfg.batch_size / t:,.0f} images/s, "
          f"model FLOPs utilisation {flops / t / limit:.1%}")

    # (a) what freezing saves: a cached row lookup against the frozen LM run on the batch's captions
    two_captions = ["a small red circle on the left", "a blue square above a red cross"]
    tokenizer = Tokenizer.train("".join(c + "\n" for c in two_captions) * 50, 290)
    frozen_lm = LanguageModel(LMConfig(vocab_size=290)).to(device).eval().requires_grad_(False)
    captions = two_captions * (align_cfg.batch_size // 2)
    caption_ids, weights = (tensor.to(device)
                            for tensor in reread_tokens(tokenizer, captions, frozen_lm.context))
    cache = torch.randn(2000, cfg.width, device=device)
    rows = torch.randint(0, 2000, (align_cfg.batch_size,), device=device)
    recompute = seconds(lambda: reread_features(frozen_lm, caption_ids, weights))
    lookup = seconds(lambda: cache[rows])
    print(f"3a. text embeddings for a batch of {align_cfg.batch_size}: through the frozen LM "
          f"{recompute * 1e3:.1f} ms, from the cache {lookup * 1e3:.3f} ms "
          f"({recompute / max(lookup, 1e-9):,.0f}x)")

    # (b) info_nce against F.cross_entropy, forward + backward
    for n in (256, 1024, 4096):
        v = torch.randn(n, cfg.width, device=device, requires_grad=True)
        w = torch.randn(n, cfg.width, device=device)
        labels = torch.arange(n, device=device)

        def by_hand():
            info_nce(v, w, 0.07).backward()

        def with_cross_entropy():
            logits = F.normalize(v, dim=1) @ F.normalize(w, dim=1).T / 0.07
            ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2).backward()

        logits = F.normalize(v, dim=1) @ F.normalize(w, dim=1).T / 0.07
        reference = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        difference = abs(info_nce(v, w, 0.07).item() - reference.item())
        a, b = seconds(by_hand, repeat=5), seconds(with_cross_entropy, repeat=5)
        print(f"3b. N = {n:>4}: info_nce {a * 1e3:7.1f} ms, F.cross_entropy {b * 1e3:7.1f} ms "
              f"(ratio {a / b:.2f}), |difference| {difference:.1e}")

    # (c) attention written out against F.scaled_dot_product_attention
    attention = CausalSelfAttention(cfg.width, cfg.heads, cfg.context).to(device)
    x = torch.randn(cfg.batch_size, cfg.context, cfg.width, device=device)
    B, T, C = x.shape

    def fused():
        q, k, v = attention.qkv(x).split(C, dim=2)
        q, k, v = (z.view(B, T, cfg.heads, C // cfg.heads).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attention.proj(out.transpose(1, 2).reshape(B, T, C))

    with torch.no_grad():
        written, sdpa = seconds(lambda: attention(x)), seconds(fused)
        difference = (attention(x) - fused()).abs().max().item()
    print(f"3c. attention, batch {B} x {T} tokens: written out {written * 1e3:.2f} ms, "
          f"scaled_dot_product_attention {sdpa * 1e3:.2f} ms (ratio {written / sdpa:.2f}), "
          f"max |difference| {difference:.1e}")

    # (d) captions generated with the key-value cache against re-reading the row every token
    frozen_lm = LanguageModel(cfg).to(device).eval().requires_grad_(False)
    context_emb = torch.randn(500, 1 + align_cfg.prefix_tokens, cfg.width, device=device)
    prompt = torch.randint(0, cfg.vocab_size, (500, 1), device=device)

    @torch.no_grad()
    def reread(new_tokens=20):
        row = prompt
        for _ in range(new_tokens):
            next_id = frozen_lm.logits(frozen_lm(row, prefix=context_emb)[:, -1]).argmax(-1)
            row = torch.cat([row, next_id[:, None]], dim=1)

    cached = seconds(lambda: generate(frozen_lm, context_emb, prompt, 20), repeat=3)
    reread_time = seconds(reread, repeat=3)
    print(f"3d. 500 captions of 20 tokens: with the cache {cached * 1e3:.0f} ms, re-reading the "
          f"row {reread_time * 1e3:.0f} ms ({reread_time / cached:.1f}x)")

    # 4. the embedder's layout, then torch.compile of each model (its first steps compile it).
    # Each pair is timed one right after the other, so that a load that comes and goes on a shared
    # machine weighs on both alike.
    default_layout = VisualEmbedder(world_cfg.image_size, cfg.width, align_cfg.prefix_tokens)
    default_layout.to(device, memory_format=torch.contiguous_format)
    default_optimizer = adamw(default_layout.parameters(), align_cfg.lr, align_cfg.weight_decay,
                              device)
    default_scaler = gradient_scaler(device, precision)
    channels_last = seconds(align_step)
    t = seconds(lambda: align_step(default_layout, default_optimizer, default_scaler))
    print(f"4a. alignment step: channels-last embedder {channels_last * 1e3:.1f} ms, "
          f"default layout {t * 1e3:.1f} ms")
    # "reduce-overhead" records the model's forward and backward as CUDA graphs and replays them:
    # a few launches a step instead of hundreds (the loss and the optimizer stay as they are)
    modes = ["default", "reduce-overhead"] if device.type == "cuda" else ["default"]
    for name, model, step in (("LM pretraining", lm, lambda model: lm_step(model)),
                              ("alignment", embedder, lambda model: align_step(model))):
        for mode in modes:
            torch._dynamo.reset()  # compile afresh: no graphs kept from the mode before
            compiled_model = torch.compile(model, mode=mode)
            compiling = seconds(lambda: [step(compiled_model) for _ in range(2)], repeat=1,
                                warmup=0)
            eager, compiled = seconds(lambda: step(model)), seconds(lambda: step(compiled_model))
            print(f"4b. {name} step: eager {eager * 1e3:.1f} ms, compiled ({mode}) "
                  f"{compiled * 1e3:.1f} ms (after {compiling:.0f} s of compiling)")

    # 5. the alignment step against N: what a larger batch buys where launches, not FLOPs, bound it
    for n in (256, 512, 1024, 2048):
        images, text_emb = batch(n)
        t = seconds(lambda: align_step(images=images, text_emb=text_emb), repeat=5)
        print(f"5. alignment (InfoNCE only), N = {n:>4}: {t * 1e3:7.1f} ms/step, "
              f"{n / t:9,.0f} images/s")


if __name__ == "__main__":
    main()
