"""Data parallel InfoNCE: two processes (gloo, CPU), each with half the batch, give the loss and
the gradients of one process holding the whole batch (open_clip's local loss + gather with grad)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minivlp import (Temperature, VisualEmbedder, average_gradients, batch_rows, data_parallel,
                     global_info_nce, info_nce)

BATCH, WIDTH = 8, 16


def inputs():
    """The global batch: images, text embeddings, caption ids (two pairs share a caption)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 3, 16, 16), dtype=torch.uint8, generator=generator)
    text_emb = torch.randn(BATCH, WIDTH, generator=generator)
    caption_ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 1])
    return images, text_emb, caption_ids


def models():
    torch.manual_seed(0)
    # eval mode: BatchNorm then uses its running statistics, the same for a half batch and the
    # whole (train mode would use each process's own half: SyncBatchNorm needs GPUs)
    return VisualEmbedder(16, WIDTH, prefix_tokens=2).eval(), Temperature(0.07, learn=True)


def gradients(embedder, temperature):
    return {"temperature": temperature.log_tau.grad.clone(),
            **{name: p.grad.clone() for name, p in embedder.named_parameters()
               if p.grad is not None}}


def one_process():
    images, text_emb, caption_ids = inputs()
    embedder, temperature = models()
    image_emb, _ = embedder(images)
    loss = info_nce(image_emb, text_emb, temperature(), caption_ids=caption_ids)
    loss.backward()
    return loss.detach(), gradients(embedder, temperature)


def worker(rank, world, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images, text_emb, caption_ids = inputs()
        mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        embedder, temperature = models()
        model = data_parallel(embedder, torch.device("cpu"), every_parameter_used=False)
        image_emb, _ = model(images[mine])
        loss = global_info_nce(image_emb, text_emb[mine], temperature(), caption_ids[mine])
        loss.backward()                                    # DDP averages the embedder's gradients
        average_gradients(temperature.parameters())
        total = loss.detach().clone()
        dist.all_reduce(total)                             # the global loss: mean of the local ones
        results[rank] = (total / world, gradients(embedder, temperature))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_loss_and_gradients_of_the_concatenated_batch(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    loss, grads = one_process()
    for rank in (0, 1):
        rank_loss, rank_grads = results[rank]
        assert torch.allclose(rank_loss, loss, atol=1e-5), (rank, rank_loss, loss)
        assert rank_grads.keys() == grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(rank_grads[name], grad, atol=1e-5), (rank, name)
    assert grads["temperature"].abs() > 0 and grads["head.weight"].abs().sum() > 0  # not all zero


def test_rows_scores_a_slice_of_the_global_batch_like_the_whole_does():
    """Two local losses, each on half of the rows, average to the whole batch's loss."""
    _, text_emb, caption_ids = inputs()
    image_emb = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(1))
    whole = info_nce(image_emb, text_emb, 0.1, caption_ids=caption_ids)
    halves = [info_nce(image_emb, text_emb, 0.1, caption_ids=caption_ids, rows=slice(a, a + 4))
              for a in (0, 4)]
    assert torch.allclose((halves[0] + halves[1]) / 2, whole, atol=1e-6)


def test_batches_visit_every_row_once_an_epoch_and_processes_share_each_batch():
    n_rows, batch, world = 40, 8, 4
    one_process = [batch_rows(n_rows, batch, seed=3, step=step) for step in range(15)]  # 3 epochs
    for epoch in range(3):                          # 5 steps an epoch: each row exactly once
        rows = torch.cat(one_process[5 * epoch:5 * epoch + 5])
        assert sorted(rows.tolist()) == list(range(n_rows)), epoch
    assert not torch.equal(torch.cat(one_process[:5]), torch.cat(one_process[5:10]))  # reshuffled
    for step, whole in enumerate(one_process):      # W processes: disjoint shares of that batch
        shares = [batch_rows(n_rows, batch, 3, step, rank, world) for rank in range(world)]
        assert all(len(share) == batch // world for share in shares)
        assert torch.equal(torch.cat(shares), whole), step


def test_a_batch_may_cross_from_one_epoch_into_the_next():
    rows = torch.cat([batch_rows(10, 4, seed=0, step=step) for step in range(5)])  # 20 = 2 epochs
    assert sorted(rows[:10].tolist()) == sorted(rows[10:].tolist()) == list(range(10))  # step 2
