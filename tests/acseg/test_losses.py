import pytest
import torch

from acseg.losses import (
    LOSSES,
    affinity,
    concept_intensity,
    concept_loss,
    modularity,
    modularity_loss,
    modularity_matrix,
    smooth_concept_intensity,
)


def block_features(n_blocks=3, per_block=20, dim=16, noise=0.05, seed=0):
    """Pixels drawn around n_blocks orthogonal directions: a block-structured affinity."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:n_blocks]
    labels = torch.arange(n_blocks).repeat_interleave(per_block)
    x = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return x[None], labels


def one_hot_assignment(labels, k):
    return torch.nn.functional.one_hot(labels, k).float()[None]


def test_true_partition_beats_random_partition():
    x, labels = block_features()
    true_loss = modularity_loss(x, one_hot_assignment(labels, 3))
    g = torch.Generator().manual_seed(1)
    random_labels = torch.randint(0, 3, labels.shape, generator=g)
    random_loss = modularity_loss(x, one_hot_assignment(random_labels, 3))
    assert true_loss < random_loss - 0.3  # Q(true) ~ 2/3 for 3 equal blocks, Q(random) ~ 0


def test_hard_assignment_gives_newman_modularity():
    """With a 0/1 assignment, -loss is Newman's Q = sum_c (e_cc - a_c^2), computed here independently."""
    x, labels = block_features(n_blocks=4, per_block=5, noise=0.5, seed=3)
    a = affinity(x)[0]
    two_m = a.sum()
    q = 0.0
    for c in range(4):
        m = labels == c
        q += a[m][:, m].sum() / two_m - (a[m].sum() / two_m) ** 2
    assert torch.allclose(-modularity_loss(x, one_hot_assignment(labels, 4)), q, atol=1e-5)


def test_modularity_matrix_rows_sum_to_zero_and_no_gradient_through_graph():
    x, labels = block_features()
    w, two_m = modularity_matrix(affinity(x))
    assert torch.allclose(w.sum(-1), torch.zeros_like(w.sum(-1)), atol=1e-4)
    x = x.clone().requires_grad_(True)
    s = one_hot_assignment(labels, 3).requires_grad_(True)
    modularity_loss(x, s).backward()
    assert x.grad is None and s.grad is not None


def test_loss_independent_of_number_of_unused_concepts():
    """Adding prototypes that nobody uses does not change the loss (the paper's point)."""
    x, labels = block_features()
    s3 = one_hot_assignment(labels, 3)
    s6 = torch.cat([s3, torch.zeros_like(s3)], -1)
    assert torch.allclose(modularity_loss(x, s3), modularity_loss(x, s6))


def test_concept_intensity_is_max_over_concepts():
    s = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]])
    d = concept_intensity(s)
    assert torch.allclose(d[0], torch.tensor([[1.0, 0.5, 0.0], [0.5, 0.25, 0.5], [0.0, 0.5, 1.0]]))


def test_concept_intensity_has_the_max_value_and_gradient():
    """The winner-gather form equals the literal max over concepts, values and gradients alike."""
    torch.manual_seed(0)
    # as in training: S+ = max(S, 0), so many products tie at zero (the max spreads their gradient over the
    # tied concepts, the gather gives it to one), but the clip stops those gradients before they reach S
    s = torch.randn(3, 20, 5, requires_grad=True)
    weights = torch.randn(3, 20, 20)
    s_plus = s.clamp_min(0)
    literal = (s_plus.unsqueeze(-2) * s_plus.unsqueeze(-3)).amax(dim=-1)
    (grad_literal,) = torch.autograd.grad((weights * literal).sum(), s)
    d = concept_intensity(s.clamp_min(0))
    (grad,) = torch.autograd.grad((weights * d).sum(), s)
    assert torch.equal(d, literal)
    assert torch.allclose(grad, grad_literal, atol=1e-5)


def test_the_smooth_intensity_never_exceeds_the_max_and_tends_to_it():
    torch.manual_seed(0)
    s_plus = torch.rand(2, 30, 6)
    hard = concept_intensity(s_plus)
    gaps = [(hard - smooth_concept_intensity(s_plus, tau)).max().item() for tau in (0.3, 0.1, 0.01, 0.001)]
    assert all(g >= -1e-6 for g in gaps)  # a softmax-weighted mean of the products is at most their max
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3 < gaps[0]


def test_the_smooth_intensity_has_a_continuous_gradient_where_the_winner_switches():
    """The defining property: as two concepts trade places as a pair's winner, the hard max's gradient jumps from one
    to the other; the smooth max's moves a little (which is what keeps a rounding difference from changing the
    training's path)."""
    def grads(intensity, eps):
        s = torch.tensor([[[0.5 + eps, 0.5 - eps], [0.6, 0.6]]], requires_grad=True)  # pair (0, 1): a near-tie
        (g,) = torch.autograd.grad(intensity(s)[0, 0, 1], s)
        return g[0, 0]

    hard_jump = (grads(concept_intensity, 1e-6) - grads(concept_intensity, -1e-6)).abs().max()
    smooth = lambda s: smooth_concept_intensity(s, 0.1)
    smooth_jump = (grads(smooth, 1e-6) - grads(smooth, -1e-6)).abs().max()
    assert hard_jump > 0.5 and smooth_jump < 1e-4


def test_modularity_loss_passes_the_intensity_temperature_on():
    x, labels = block_features()
    s = torch.nn.functional.normalize(x, dim=-1) @ torch.eye(16)[:3].T
    hard = modularity_loss(x, s.clamp_min(0))
    assert torch.equal(concept_loss("modularity", x, s), hard)
    smooth = concept_loss("modularity", x, s, intensity_temperature=0.1)
    expected = -modularity(smooth_concept_intensity(s.clamp_min(0), 0.1), *modularity_matrix(affinity(x))).mean()
    assert torch.allclose(smooth, expected) and not torch.equal(smooth, hard)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_variant_prefers_the_true_partition(name):
    x, labels = block_features()
    k = 3
    true_concepts = torch.eye(16)[:k][None]  # the block directions
    g = torch.Generator().manual_seed(0)
    wrong_concepts = torch.randn(1, k, 16, generator=g)
    sim = lambda c: torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(c, dim=-1).transpose(1, 2)
    assert concept_loss(name, x, sim(true_concepts)) < concept_loss(name, x, sim(wrong_concepts))


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'modularty'.*modularity"):
        concept_loss("modularty", torch.zeros(1, 2, 3), torch.zeros(1, 2, 2))


def test_batched_equals_per_image():
    x1, l1 = block_features(seed=0)
    x2, l2 = block_features(seed=5)
    s1, s2 = one_hot_assignment(l1, 3), one_hot_assignment(l2.flip(0), 3)
    w, m = modularity_matrix(affinity(torch.cat([x1, x2])))
    q = modularity(concept_intensity(torch.cat([s1, s2])), w, m)
    assert torch.allclose(q[0], -modularity_loss(x1, s1)) and torch.allclose(q[1], -modularity_loss(x2, s2))


def test_the_knn_graph_of_two_separated_clusters_has_no_edge_across_them():
    from acseg.losses import Graph

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor([1.0, 0.0, 0.0]) + 0.1 * torch.randn(15, 3, generator=g),
                   torch.tensor([0.0, 1.0, 0.0]) + 0.1 * torch.randn(15, 3, generator=g)])[None]
    a = Graph("knn", k=5)(x)[0]
    assert (a[:15, 15:] == 0).all() and (a[15:, :15] == 0).all()
    assert torch.equal(a, a.T) and ((a > 0).sum(1) >= 6).all()  # each keeps itself and at least its 5 neighbours
    dense = Graph()(x)[0]
    assert (dense[:15, 15:] > 0).any()  # the dense graph links them (noise gives positive cosines)


def test_on_a_planted_partition_the_sparsified_graph_prefers_the_true_partition_to_a_coarser_one():
    """Four blocks in two loose pairs: the dense graph's modularity rates the coarse 2-way split above the true 4-way
    partition (its optimum is coarse); the k-NN graph rates the true partition higher."""
    from acseg.losses import Graph

    g = torch.Generator().manual_seed(0)
    pair_a, pair_b = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    centres = torch.stack([pair_a + 0.35 * torch.tensor([0, 0, 1.0, 0]), pair_a + 0.35 * torch.tensor([0, 0, 0, 1.0]),
                           pair_b + 0.35 * torch.tensor([0, 0, 1.0, 0]), pair_b + 0.35 * torch.tensor([0, 0, 0, 1.0])])
    labels = torch.arange(4).repeat_interleave(20)
    x = (centres[labels] + 0.05 * torch.randn(80, 4, generator=g))[None]
    true, coarse = one_hot_assignment(labels, 4), one_hot_assignment(labels // 2, 4)

    def q(graph, assignment):
        return -modularity_loss(x, assignment, graph).item()

    assert q(Graph(), coarse) > q(Graph(), true)
    knn = Graph("knn", k=10)
    assert q(knn, true) > q(knn, coarse)
