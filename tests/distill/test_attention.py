"""Attention maps recomputed from their definitions with explicit loops, and against captum."""

import itertools

import pytest
import torch
from captum.attr import LayerGradCam

from wsidistill.distill import d4_transform
from wsidistill.distill.attention import (
    align_map,
    at_map,
    atplus_maps,
    fma_map,
    gradcam_maps,
    gradcam_weights,
    minmax_normalise,
    mip_map,
    saliency_map,
)
from wsidistill.models import build_model


def loop_channel_weights(features, logits):
    """a[b, c, k] = mean_ij d y_c / d A_k(i, j), one class and one sample at a time."""
    B, K, H, W = features.shape
    a = torch.zeros(B, logits.shape[1], K, dtype=features.dtype)
    for b in range(B):
        for c in range(logits.shape[1]):
            (g,) = torch.autograd.grad(logits[b, c], features, retain_graph=True)
            for k in range(K):
                a[b, c, k] = g[b, k].sum() / (H * W)
    return a


def loop_maps(features, a, relu_per_channel):
    B, K, H, W = features.shape
    out = torch.zeros(B, a.shape[1], H, W, dtype=features.dtype)
    for b, c, i, j in itertools.product(range(B), range(a.shape[1]), range(H), range(W)):
        terms = [a[b, c, k] * features[b, k, i, j] for k in range(K)]
        out[b, c, i, j] = sum(max(t, 0.0) for t in terms) if relu_per_channel else max(sum(terms), 0.0)
    return out


@pytest.fixture
def net_and_output(pointwise_net):
    net = pointwise_net()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    out = net(x)
    return net, x, out


def test_atplus_and_gradcam_match_explicit_loops(net_and_output):
    net, _, out = net_and_output
    features = out.features["block2"]
    a = loop_channel_weights(features, out.logits)
    for fn, per_channel in [(atplus_maps, True), (gradcam_maps, False)]:
        expected = loop_maps(features.detach(), a, per_channel)
        torch.testing.assert_close(fn(features, logits=out.logits), expected)
        torch.testing.assert_close(fn(features, classifier_weight=net.classifier.weight), expected)


def test_closed_form_and_autograd_agree_in_value_and_gradient(net_and_output):
    net, _, out = net_and_output
    features = out.features["block2"]
    torch.testing.assert_close(
        gradcam_weights(features, classifier_weight=net.classifier.weight).expand(2, -1, -1),
        gradcam_weights(features, logits=out.logits),
    )
    for fn in (atplus_maps, gradcam_maps):
        auto = fn(features, logits=out.logits, create_graph=True)
        closed = fn(features, classifier_weight=net.classifier.weight)
        torch.testing.assert_close(auto, closed)
        params = [net.classifier.weight, net.block2.weight]
        g_auto = torch.autograd.grad(auto.pow(2).sum(), params, retain_graph=True)
        g_closed = torch.autograd.grad(closed.pow(2).sum(), params, retain_graph=True)
        for ga, gc in zip(g_auto, g_closed):
            assert gc.abs().sum() > 0
            torch.testing.assert_close(ga, gc)


def test_gradcam_matches_captum_layer_gradcam():
    torch.manual_seed(0)
    model = build_model("smallcnn", 3, output_stride=2).eval().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    out = model(x)
    target = torch.tensor([2, 0])
    ours = gradcam_maps(out.features["block4"], classifier_weight=model.classifier.weight, target=target)
    captum = LayerGradCam(lambda inp: model(inp).logits, model.blocks[3]).attribute(
        x, target=target, relu_attributions=True
    )
    torch.testing.assert_close(ours, captum.detach())
    assert ours.abs().sum() > 0


def test_atplus_equals_gradcam_when_all_terms_nonnegative_and_dominates_otherwise(net_and_output):
    net, _, out = net_and_output
    features = out.features["block2"]
    weight = net.classifier.weight
    signed_plus = atplus_maps(features, classifier_weight=weight)
    signed_cam = gradcam_maps(features, classifier_weight=weight)
    assert (signed_plus >= signed_cam - 1e-12).all()
    assert (signed_plus > signed_cam + 1e-6).any(), "signed terms must make AT+ differ"
    positive = features.abs()
    torch.testing.assert_close(
        atplus_maps(positive, classifier_weight=weight.abs()), gradcam_maps(positive, classifier_weight=weight.abs())
    )


def test_target_class_selects_one_map(net_and_output):
    net, _, out = net_and_output
    features = out.features["block2"]
    target = torch.tensor([1, 2])
    every = atplus_maps(features, classifier_weight=net.classifier.weight)
    one = atplus_maps(features, logits=out.logits, target=target)
    assert one.shape == (2, 1, 3, 4)
    torch.testing.assert_close(one[:, 0], every[torch.arange(2), target])


def test_at_map_is_l2_normalised_sum_of_squares():
    a = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    expected = torch.zeros(2, 1, 2, 3, dtype=torch.float64)
    for b in range(2):
        energy = [[sum(a[b, k, i, j] ** 2 for k in range(3)) for j in range(3)] for i in range(2)]
        norm = sum(e**2 for row in energy for e in row) ** 0.5
        for i, j in itertools.product(range(2), range(3)):
            expected[b, 0, i, j] = energy[i][j] / norm
    torch.testing.assert_close(at_map(a), expected)


def test_fma_and_mip_maps_match_loops():
    first = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    middle = torch.randn(2, 5, 2, 2, dtype=torch.float64)
    last = torch.randn(2, 4, 2, 2, dtype=torch.float64)

    def pooled_channel_stat(a, b, i, j, stat):
        """Channel statistic of layer ``a`` averaged over the cells of last-grid cell (i, j)."""
        s = a.shape[-1] // 2
        cells = [stat(a[b, :, i * s + u, j * s + v]) for u in range(s) for v in range(s)]
        return sum(cells) / len(cells)

    fma = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    mip = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    for b, i, j in itertools.product(range(2), range(2), range(2)):
        fma[b, 0, i, j] = (pooled_channel_stat(first, b, i, j, torch.mean) + last[b, :, i, j].mean()) / 2
        mip[b, 0, i, j] = max(pooled_channel_stat(layer, b, i, j, torch.sum) for layer in (first, middle, last))
    torch.testing.assert_close(fma_map([first, middle, last]), fma)
    torch.testing.assert_close(mip_map([first, middle, last]), mip)


def test_saliency_map_matches_per_sample_gradients(net_and_output):
    net, _, _ = net_and_output
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    logits = net(x).logits
    expected = torch.zeros(2, 3, 3, 4, dtype=torch.float64)
    for b, c in itertools.product(range(2), range(3)):
        (g,) = torch.autograd.grad(logits[b, c], x, retain_graph=True)
        for i, j in itertools.product(range(3), range(4)):
            expected[b, c, i, j] = max(abs(g[b, ch, i, j]) for ch in range(3))
    torch.testing.assert_close(saliency_map(logits, x), expected)
    torch.testing.assert_close(saliency_map(logits, x, target=torch.tensor([2, 1])), expected[[0, 1], [2, 1]][:, None])


def test_minmax_normalise_per_sample_and_per_class():
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    per_sample = torch.empty_like(x)
    per_class = torch.empty_like(x)
    for b in range(2):
        per_sample[b] = (x[b] - x[b].min()) / (x[b].max() - x[b].min() + 1e-8)
        for c in range(3):
            per_class[b, c] = (x[b, c] - x[b, c].min()) / (x[b, c].max() - x[b, c].min() + 1e-8)
    torch.testing.assert_close(minmax_normalise(x, 1e-8), per_sample)
    torch.testing.assert_close(minmax_normalise(x, 1e-8, start_dim=2), per_class)


def test_align_map_area_average_when_shrinking_bilinear_when_enlarging():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(align_map(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert align_map(x, (8, 8)).shape[-2:] == (8, 8)
    assert align_map(x, (4, 4)) is x


def test_d4_is_the_dihedral_group():
    square = torch.arange(9.0).view(3, 3)
    assert len({tuple(d4_transform(square, k).flatten().tolist()) for k in range(8)}) == 8
    for k in range(8):  # every element has an inverse: rotations the opposite rotation, reflections themselves
        inverse = (4 - k) % 4 if k < 4 else k
        torch.testing.assert_close(d4_transform(d4_transform(square, k), inverse), square)
    torch.testing.assert_close(d4_transform(square, 4), square.flip(-1))
    torch.testing.assert_close(d4_transform(square, 1), torch.rot90(square, 1, dims=(-2, -1)))


@pytest.mark.parametrize("k", range(8))
def test_maps_commute_with_d4_for_an_equivariant_network(pointwise_net, k):
    net = pointwise_net()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    xt = d4_transform(x.detach(), k).requires_grad_(True)
    out, out_t = net(x), net(xt)
    w = net.classifier.weight

    def maps(o, images):
        feats = list(o.features.values())
        return [
            atplus_maps(feats[-1], classifier_weight=w),
            gradcam_maps(feats[-1], logits=o.logits),
            at_map(feats[-1]),
            fma_map(feats),
            mip_map(feats),
            saliency_map(o.logits, images),
        ]

    for plain, transformed in zip(maps(out, x), maps(out_t, xt)):
        torch.testing.assert_close(transformed, d4_transform(plain, k))


def test_align_map_does_not_commute_with_min_max_normalisation():
    """Pooling lowers the maximum: normalise-then-pool leaves a target that no longer spans [0, 1]."""
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 3] = 4.0
    pool_then_normalise = minmax_normalise(align_map(x, (2, 2)))
    normalise_then_pool = align_map(minmax_normalise(x), (2, 2))
    torch.testing.assert_close(pool_then_normalise, torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64))
    torch.testing.assert_close(normalise_then_pool, torch.tensor([[[[0.0, 0.25], [0.0, 0.0]]]], dtype=torch.float64))
    # Normalising again after pooling recovers the pooled-then-normalised map (pooling is affine-equivariant).
    torch.testing.assert_close(minmax_normalise(normalise_then_pool), pool_then_normalise)
