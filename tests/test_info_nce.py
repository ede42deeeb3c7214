"""InfoNCE (§4.2) against a naive double loop, F.cross_entropy, gradcheck and known values."""

import math

import pytest
import torch
import torch.nn.functional as F

from minivlp import Temperature, info_nce


def naive_info_nce(v, t, tau, caption_ids=None):
    """§4.2 with plain Python loops in float64: L_i = -log(exp(s_ii/τ) / Σ_j exp(s_ij/τ)).
    A j != i with the same caption as i is left out of the sum."""
    n = len(v)
    total = 0.0
    for i in range(n):
        def sim(a, b):
            dot = sum(a[k] * b[k] for k in range(len(a)))
            return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(x * x for x in b))
        denominator = 0.0
        for j in range(n):
            if j != i and caption_ids is not None and caption_ids[j] == caption_ids[i]:
                continue
            denominator += math.exp(sim(v[i], t[j]) / tau)
        total += -math.log(math.exp(sim(v[i], t[i]) / tau) / denominator)
    return total / n


def random_pair(n=6, c=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=dtype), torch.randn(n, c, generator=g, dtype=dtype)


@pytest.mark.parametrize("tau", [1.0, 0.07, 0.5])
def test_one_direction_matches_the_naive_double_loop(tau):
    v, t = random_pair()
    expected = naive_info_nce(v.tolist(), t.tolist(), tau)
    got = info_nce(v, t, tau, symmetric=False).item()
    assert got == pytest.approx(expected, abs=1e-9)


def test_symmetric_loss_matches_the_naive_loop_both_ways():
    v, t = random_pair()
    expected = (naive_info_nce(v.tolist(), t.tolist(), 0.1)
                + naive_info_nce(t.tolist(), v.tolist(), 0.1)) / 2
    assert info_nce(v, t, 0.1).item() == pytest.approx(expected, abs=1e-9)


def test_duplicate_captions_are_not_negatives():
    v, t = random_pair(n=5)
    caption_ids = torch.tensor([0, 1, 0, 2, 1])
    expected = naive_info_nce(v.tolist(), t.tolist(), 0.2, caption_ids.tolist())
    got = info_nce(v, t, 0.2, symmetric=False, caption_ids=caption_ids).item()
    assert got == pytest.approx(expected, abs=1e-9)
    all_distinct = info_nce(v, t, 0.2, symmetric=False, caption_ids=torch.arange(5)).item()
    assert all_distinct == pytest.approx(naive_info_nce(v.tolist(), t.tolist(), 0.2), abs=1e-9)


def test_matches_cross_entropy_with_diagonal_labels():
    v, t = random_pair(n=32, c=16, dtype=torch.float32)
    tau = 0.07
    logits = F.normalize(v, dim=1) @ F.normalize(t, dim=1).T / tau
    labels = torch.arange(32)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(info_nce(v, t, tau), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(info_nce(v, t, tau, symmetric=False),
                               F.cross_entropy(logits, labels), rtol=1e-6, atol=1e-6)


def test_gradcheck_through_both_embeddings_and_the_temperature():
    v, t = random_pair(n=4, c=3)
    v.requires_grad_(True)
    t.requires_grad_(True)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    caption_ids = torch.tensor([0, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda a, b, c: info_nce(a, b, c, caption_ids=caption_ids),
                                    (v, t, tau))


@pytest.mark.parametrize("n", [1, 2, 8, 100])
def test_equal_similarities_give_log_n(n):
    same = torch.ones(n, 4)                                            # every cosine is 1
    assert info_nce(same, same, 0.07).item() == pytest.approx(math.log(n), abs=1e-5)


def test_swapping_images_and_texts_leaves_the_symmetric_loss_unchanged():
    v, t = random_pair(n=10)
    assert info_nce(v, t, 0.1).item() == pytest.approx(info_nce(t, v, 0.1).item(), abs=1e-12)
    assert info_nce(v, t, 0.1, symmetric=False).item() != pytest.approx(
        info_nce(t, v, 0.1, symmetric=False).item(), abs=1e-6)


@pytest.mark.parametrize("n, tau", [(1, 0.07), (64, 0.001), (1, 0.001)])
def test_float32_at_a_tiny_temperature_matches_float64_cross_entropy(n, tau):
    """At τ = 0.001 the logits reach ±1000, where exp overflows even float64: the loss must stay
    a log-sum-exp, equal to F.cross_entropy in float64 (one pair: nothing to confuse, loss 0)."""
    v, t = random_pair(n=n, c=8)
    v.requires_grad_(True)
    logits = F.normalize(v, dim=1) @ F.normalize(t, dim=1).T / tau       # float64
    labels = torch.arange(n)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    (expected_grad,) = torch.autograd.grad(expected, v)
    v32 = v.detach().float().requires_grad_(True)
    loss = info_nce(v32, t.float(), tau)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(v32.grad, expected_grad.float(), rtol=1e-3,
                               atol=1e-3 * expected_grad.abs().max().item() + 1e-6)


def test_temperature_is_clamped_so_that_its_inverse_stays_at_most_100():
    temperature = Temperature(0.07, learn=True)
    assert temperature().item() == pytest.approx(0.07)
    with torch.no_grad():
        temperature.log_tau.fill_(math.log(1e-4))
    temperature.clamp_()
    assert 1 / temperature().item() == pytest.approx(100.0)
    # the clamp acts on the stored value, so the gradient still reaches it afterwards
    temperature().backward()
    assert temperature.log_tau.grad.item() == pytest.approx(0.01)
    assert not Temperature(0.07, learn=False).log_tau.requires_grad


def test_the_documents_worked_example_of_two_pairs():
    """§4.3 with the numbers of tutorials/05_infonce_by_hand.ipynb: v1 (the yellow puppy's image)
    meets t1 (its caption), v2 (the red car's image) meets t2. Worked by hand:
        |v1|² = 0.98   |v2|² = 1.01   |t1|² = 1.09   |t2|² = 1.25
        v1·t1 = 1.02   v1·t2 = 0.30   v2·t1 = 0.28   v2·t2 = 1.10
    and s_ij = sim(v_i, t_j) = v_i·t_j / (|v_i| |t_j|). With two pairs each term has one negative:
        L_i = -log( e^(s_ii/τ) / (e^(s_ii/τ) + e^(s_ij/τ)) ) = log(1 + e^((s_ij - s_ii)/τ)),
    and caption -> image is the same down the columns. Swapping the captions makes the
    off-diagonal scores the right ones: the loss is low only when each image meets its own."""
    # the notebook's numbers, in float64: float32 resolves a loss of 0.00079 to only 3 digits
    v = torch.tensor([[0.9, 0.1, 0.4], [0.1, 0.8, 0.6]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.5]], dtype=torch.float64)
    length_v, length_t = [math.sqrt(0.98), math.sqrt(1.01)], [math.sqrt(1.09), math.sqrt(1.25)]
    dots = [[1.02, 0.30], [0.28, 1.10]]
    s = [[dots[i][j] / (length_v[i] * length_t[j]) for j in (0, 1)] for i in (0, 1)]

    def by_hand(s, tau):
        """(image -> text, symmetric) loss of two pairs with similarities s."""
        image_to_text = sum(math.log1p(math.exp((s[i][1 - i] - s[i][i]) / tau)) for i in (0, 1)) / 2
        text_to_image = sum(math.log1p(math.exp((s[1 - j][j] - s[j][j]) / tau)) for j in (0, 1)) / 2
        return image_to_text, (image_to_text + text_to_image) / 2

    assert f"{by_hand(s, 0.1)[0]:.5f}" == "0.00079"                     # as the notebook prints
    for tau in (1.0, 0.1):
        image_to_text, symmetric = by_hand(s, tau)
        assert info_nce(v, t, tau, symmetric=False).item() == pytest.approx(image_to_text, rel=1e-9)
        assert info_nce(v, t, tau).item() == pytest.approx(symmetric, rel=1e-9)
        swapped = by_hand([row[::-1] for row in s], tau)[1]            # t2 is now v1's caption
        assert info_nce(v, t.flip(0), tau).item() == pytest.approx(swapped, rel=1e-9)
        assert swapped > symmetric
