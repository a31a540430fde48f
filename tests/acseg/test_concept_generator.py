import pytest
import torch

from acseg.assignment import concepts_per_image, cosine_assignment, hard_assignment
from acseg.concept_generator import ConceptGenerator


@pytest.mark.parametrize("width,self_attention", [(None, True), (16, False)])
def test_concepts_live_in_feature_space_and_learn(width, self_attention):
    torch.manual_seed(0)
    gen = ConceptGenerator(feature_dim=24, n_prototypes=4, depth=2, width=width, heads=2, mlp_width=32,
                           self_attention=self_attention)
    pixels = torch.randn(3, 50, 24)
    concepts = gen(pixels)
    assert concepts.shape == (3, 4, 24)
    concepts.sum().backward()
    assert gen.prototypes.grad is not None and gen.prototypes.grad.abs().sum() > 0


def test_concepts_depend_on_the_image():
    torch.manual_seed(0)
    gen = ConceptGenerator(feature_dim=8, n_prototypes=3, depth=1, heads=2, mlp_width=16)
    a, b = torch.randn(1, 20, 8), torch.randn(1, 20, 8)
    assert not torch.allclose(gen(a), gen(b))


def test_width_must_divide_heads():
    with pytest.raises(ValueError, match="divisible"):
        ConceptGenerator(feature_dim=8, width=10, heads=3)


def test_assignment_and_adaptive_count():
    pixels = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])
    concepts = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    s = cosine_assignment(pixels, concepts)
    assert s.shape == (1, 3, 3) and s.max() <= 1 + 1e-6 and s.min() >= -1 - 1e-6
    a = hard_assignment(s)
    assert a.tolist() == [[0, 0, 1]]
    assert concepts_per_image(a, 3).tolist() == [2]  # the third prototype wins no pixel and vanishes


def test_cross_attention_in_pixel_space_is_multihead_attention():
    """Folding the key/value projections into the queries changes the cost, not the function: the same
    parameters (names, shapes, seeded initialisation) give nn.MultiheadAttention's outputs and gradients."""
    from torch import nn

    from acseg.concept_generator import CrossAttention

    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=True)
    torch.manual_seed(0)
    ours = CrossAttention(32, 4)
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in reference.state_dict().items())
    with torch.no_grad():  # non-zero biases, so the bias terms are checked too
        reference.in_proj_bias.normal_()
        reference.out_proj.bias.normal_()
    ours.load_state_dict(reference.state_dict())
    queries, pixels = torch.randn(3, 5, 32), torch.randn(3, 70, 32, requires_grad=True)
    expected = reference(queries, pixels, pixels, need_weights=False)[0]
    got = ours(queries, pixels)
    assert torch.allclose(got, expected, atol=1e-5)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), pixels)
    (grad_got,) = torch.autograd.grad(got.square().sum(), pixels)
    assert torch.allclose(grad_got, grad_expected, atol=1e-4)


def test_a_larger_prototype_scale_starts_an_images_concepts_apart():
    """The defining property of prototype_scale: the concepts an untrained generator makes of one image are near
    copies at 1 and far apart at 100; 1 is the original initialisation, weight for weight."""
    def mean_cosine(scale):
        torch.manual_seed(0)
        gen = ConceptGenerator(feature_dim=48, n_prototypes=6, depth=6, width=32, heads=4, mlp_width=32,
                               prototype_scale=scale)
        c = torch.nn.functional.normalize(gen(torch.randn(1, 60, 48)), dim=-1)[0]
        return (c @ c.T)[~torch.eye(6, dtype=torch.bool)].mean().item(), gen

    near, default = mean_cosine(1.0)
    apart, scaled = mean_cosine(100.0)
    assert near > 0.8 and abs(apart) < 0.3
    torch.manual_seed(0)
    original = torch.randn(6, 32) * 32**-0.5  # the initialisation before the option existed
    assert torch.equal(default.prototypes.data, original)
    assert torch.allclose(scaled.prototypes.data, 100 * original)


def _layer_norm_grads(norm: torch.nn.LayerNorm, x: torch.Tensor, upstream: torch.Tensor):
    norm.zero_grad()
    out = norm(x)
    out.backward(upstream)
    return out.detach(), norm.weight.grad.clone(), norm.bias.grad.clone()


def test_fixed_order_layer_norm_is_layer_norm():
    """The same function and gradients as nn.LayerNorm (up to rounding), the same parameters."""
    from acseg.concept_generator import FixedOrderLayerNorm

    torch.manual_seed(0)
    x, upstream = torch.randn(2, 300, 32, dtype=torch.float64), torch.randn(2, 300, 32, dtype=torch.float64)
    fused, fixed = torch.nn.LayerNorm(32).double(), FixedOrderLayerNorm(32).double()
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5), fused.bias.uniform_(-1, 1)
    fixed.load_state_dict(fused.state_dict())
    for a, b in zip(_layer_norm_grads(fused, x, upstream), _layer_norm_grads(fixed, x, upstream)):
        torch.testing.assert_close(a, b)


def test_fixed_order_layer_norm_gradients_do_not_depend_on_the_thread_count():
    """Its weight and bias gradients are bit for bit the same on 1 and 2 threads (the rows outnumber torch's
    parallel grain, so 2 threads do split the work)."""
    from acseg.concept_generator import FixedOrderLayerNorm

    torch.manual_seed(0)
    norm = FixedOrderLayerNorm(128)
    x, upstream = torch.randn(8, 1000, 128), torch.randn(8, 1000, 128)
    before = torch.get_num_threads()
    try:
        grads = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            grads[threads] = _layer_norm_grads(norm, x, upstream)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(grads[1], grads[2]):
        assert torch.equal(a, b)


def test_fixed_order_keeps_the_generator_and_its_initial_weights():
    """The option swaps functions only: the same state dict keys and, for a seed, the same initial weights."""
    from acseg.concept_generator import FixedOrderLayerNorm

    models = {}
    for fixed in (False, True):
        torch.manual_seed(3)
        models[fixed] = ConceptGenerator(feature_dim=24, n_prototypes=4, depth=2, width=16, heads=2, mlp_width=32,
                                         fixed_order=fixed)
    a, b = models[False].state_dict(), models[True].state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(isinstance(m, FixedOrderLayerNorm) for m in models[True].modules()) == 2 + 3 * 2
    assert not any(isinstance(m, FixedOrderLayerNorm) for m in models[False].modules())


def test_fixed_order_softmax_is_softmax_and_its_gradient_does_not_depend_on_the_thread_count():
    """torch.softmax's function on any row length; on 1 and 2 threads bit-identical gradients, also on rows that
    are not whole vectors (391, Stanford Background's kind of grid), where torch's fused backward is not."""
    from acseg.concept_generator import fixed_order_softmax

    before = torch.get_num_threads()
    try:
        for n in (391, 768):
            torch.manual_seed(0)
            logits, upstream = torch.randn(8, 40, n, requires_grad=True), torch.randn(8, 40, n)
            grads = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                logits.grad = None
                out = fixed_order_softmax(logits)
                out.backward(upstream)
                grads.append(logits.grad.clone())
            torch.testing.assert_close(out, torch.softmax(logits, dim=-1))
            assert torch.equal(grads[0], grads[1])
    finally:
        torch.set_num_threads(before)
