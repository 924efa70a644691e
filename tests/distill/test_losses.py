"""Each loss term recomputed from its definition with explicit loops on tiny tensors."""

import itertools
import math

import pytest
import torch
from torch import nn

from wsidistill.distill import losses

D = torch.float64


def rand(*shape):
    return torch.randn(*shape, dtype=D)


def loop_minmax(m, per_class):
    out = torch.empty_like(m)
    for b in range(m.shape[0]):
        groups = [(c,) for c in range(m.shape[1])] if per_class else [tuple(range(m.shape[1]))]
        for group in groups:
            values = [m[b, c, i, j].item() for c in group for i in range(m.shape[2]) for j in range(m.shape[3])]
            lo, hi = min(values), max(values)
            for c, i, j in itertools.product(group, range(m.shape[2]), range(m.shape[3])):
                out[b, c, i, j] = (m[b, c, i, j] - lo) / (hi - lo + 1e-8)
    return out


def loop_rmse_per_sample(s, t):
    per_sample = []
    for b in range(s.shape[0]):
        diffs = [(s[b][idx] - t[b][idx]).item() ** 2 for idx in itertools.product(*map(range, s.shape[1:]))]
        per_sample.append(math.sqrt(sum(diffs) / len(diffs)))
    return sum(per_sample) / len(per_sample)


def loop_rmse(s, t):
    diffs = [(s[idx] - t[idx]).item() ** 2 for idx in itertools.product(*map(range, s.shape))]
    return math.sqrt(sum(diffs) / len(diffs))


def log_softmax_row(z, temperature=1.0):
    z = [v / temperature for v in z.tolist()]
    log_total = math.log(sum(math.exp(v) for v in z))
    return [v - log_total for v in z]


@pytest.mark.parametrize(("smoothing", "weighted"), [(0.0, False), (0.1, False), (0.2, True)])
def test_ce(smoothing, weighted):
    logits, labels = rand(4, 3), torch.tensor([0, 2, 1, 2])
    w = torch.tensor([1.0, 2.0, 0.5], dtype=D) if weighted else torch.ones(3, dtype=D)
    total, norm = 0.0, 0.0
    for b in range(4):
        logp = log_softmax_row(logits[b])
        q = [(1 - smoothing) * (c == labels[b].item()) + smoothing / 3 for c in range(3)]
        total += -sum(q[c] * w[c].item() * logp[c] for c in range(3))
        norm += w[labels[b]].item()
    value = losses.ce(logits, labels, label_smoothing=smoothing, class_weights=w if weighted else None)
    assert value.item() == pytest.approx(total / norm, rel=1e-9)


@pytest.mark.parametrize(
    ("temperature", "t2", "form"), [(4.0, True, "kl"), (1.0, False, "cross_entropy"), (2.0, True, "cross_entropy")]
)
def test_kd(temperature, t2, form):
    s, t = rand(3, 4), rand(3, 4)
    total = 0.0
    for b in range(3):
        logp_s, logp_t = log_softmax_row(s[b], temperature), log_softmax_row(t[b], temperature)
        p_t = [math.exp(v) for v in logp_t]
        cross = -sum(p * ls for p, ls in zip(p_t, logp_s))
        entropy = -sum(p * lt for p, lt in zip(p_t, logp_t))
        total += cross - (entropy if form == "kl" else 0.0)
    expected = total / 3 * (temperature**2 if t2 else 1.0)
    value = losses.kd(s, t, temperature=temperature, t2_scaling=t2, form=form)
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_kd_kl_vanishes_when_student_matches():
    z = rand(2, 5)
    assert losses.kd(z, z).item() == pytest.approx(0.0, abs=1e-12)


def test_fm_same_channels_and_grid():
    s, t = rand(2, 3, 2, 2), rand(2, 3, 2, 2)
    assert losses.fm(s, t).item() == pytest.approx(loop_rmse(s, t), rel=1e-9)


def test_fm_with_fitnets_regressor_and_coarser_student_grid():
    s, t = rand(2, 3, 2, 2), rand(2, 5, 4, 4)
    regressor = nn.Conv2d(3, 5, 1).double()
    w, bias = regressor.weight[:, :, 0, 0], regressor.bias
    expected_s = torch.zeros(2, 5, 2, 2, dtype=D)
    pooled_t = torch.zeros(2, 5, 2, 2, dtype=D)
    for b, o, i, j in itertools.product(range(2), range(5), range(2), range(2)):
        expected_s[b, o, i, j] = sum(w[o, k] * s[b, k, i, j] for k in range(3)) + bias[o]
        pooled_t[b, o, i, j] = t[b, o, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean()
    value = losses.fm(s, t, regressor=regressor)
    assert value.item() == pytest.approx(loop_rmse(expected_s.detach(), pooled_t), rel=1e-9)


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("term", ["atplus", "gradcam"])
def test_normalised_map_rmse(term, per_class):
    s, t = rand(2, 3, 2, 2).relu(), rand(2, 3, 2, 2).relu()
    expected = loop_rmse_per_sample(loop_minmax(s, per_class), loop_minmax(t, per_class))
    value = getattr(losses, term)(s, t, start_dim=2 if per_class else 1)
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_atplus_pools_a_finer_teacher_map_before_normalising():
    s, t = rand(1, 2, 2, 2).relu(), rand(1, 2, 4, 4).relu()
    pooled = torch.zeros(1, 2, 2, 2, dtype=D)
    for c, i, j in itertools.product(range(2), range(2), range(2)):
        pooled[0, c, i, j] = t[0, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean()
    expected = loop_rmse_per_sample(loop_minmax(s, False), loop_minmax(pooled, False))
    assert losses.atplus(s, t).item() == pytest.approx(expected, rel=1e-9)


def at_by_loops(s, t) -> float:
    """AT's definition, loop by loop: mean over the batch of || s/||s|| - t/||t|| ||_2 (maps on one grid)."""
    total = 0.0
    for b in range(s.shape[0]):
        vs, vt = s[b].flatten().tolist(), t[b].flatten().tolist()
        ns, nt = math.sqrt(sum(v * v for v in vs)), math.sqrt(sum(v * v for v in vt))
        total += math.sqrt(sum((a / ns - c / nt) ** 2 for a, c in zip(vs, vt)))
    return total / s.shape[0]


def test_at():
    s, t = rand(2, 1, 2, 2).abs(), rand(2, 1, 2, 2).abs()
    assert losses.at(s, t).item() == pytest.approx(at_by_loops(s, t), rel=1e-9)


@pytest.mark.parametrize("with_regressor", [False, True])
def test_sr(with_regressor):
    pooled, teacher_logits = rand(3, 4), rand(3, 2)
    k_t = 5 if with_regressor else 4
    weight, bias = rand(2, k_t), rand(2)
    regressor = nn.Linear(4, 5).double() if with_regressor else None
    features = regressor(pooled).detach() if with_regressor else pooled
    expected = torch.zeros(3, 2, dtype=D)
    for b, c in itertools.product(range(3), range(2)):
        expected[b, c] = sum(weight[c, k] * features[b, k] for k in range(k_t)) + bias[c]
    value = losses.sr(pooled, teacher_logits, weight, bias, regressor=regressor)
    assert value.item() == pytest.approx(loop_rmse(expected, teacher_logits), rel=1e-9)


@pytest.mark.parametrize("match", ["l2", "bce", "dice"])
@pytest.mark.parametrize("term", ["fma", "mip", "saliency"])
def test_segmentation_style_matching(term, match):
    s, t = rand(2, 2, 2, 3), rand(2, 2, 2, 3)
    ns, nt = loop_minmax(s, True), loop_minmax(t, True)
    if match == "l2":
        expected = loop_rmse_per_sample(ns, nt)
    elif match == "bce":
        eps = 1e-8
        cells = [
            (min(max(ns[idx].item(), eps), 1 - eps), nt[idx].item()) for idx in itertools.product(*map(range, s.shape))
        ]
        expected = -sum(q * math.log(p) + (1 - q) * math.log(1 - p) for p, q in cells) / len(cells)
    else:
        scores = []
        for b, c in itertools.product(range(2), range(2)):
            overlap = (ns[b, c] * nt[b, c]).sum().item()
            scores.append((2 * overlap + 1e-8) / (ns[b, c].sum().item() + nt[b, c].sum().item() + 1e-8))
        expected = 1 - sum(scores) / len(scores)
    value = getattr(losses, term)(s, t, match=match)
    assert value.item() == pytest.approx(expected, rel=1e-7)


def test_teacher_side_never_receives_gradient():
    s = rand(2, 3, 2, 2).requires_grad_(True)
    t = rand(2, 3, 2, 2).requires_grad_(True)
    for value in (losses.fm(s, t), losses.atplus(s, t), losses.at(s, t), losses.fma(s, t, match="dice")):
        value.backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def loop_pool(t, factor):
    """Area average of ``factor x factor`` cells, by explicit loops."""
    b_, c_, h, w = t.shape
    out = torch.zeros(b_, c_, h // factor, w // factor, dtype=t.dtype)
    for b, c, i, j in itertools.product(range(b_), range(c_), range(h // factor), range(w // factor)):
        out[b, c, i, j] = t[b, c, factor * i : factor * (i + 1), factor * j : factor * (j + 1)].mean()
    return out


def peaked_teacher(channels=1):
    """A 4x4 Teacher map with one hot cell: pooled to 2x2 then normalised it is one-hot, normalised then
    pooled its peak is 0.25, so the two orders give different targets."""
    t = torch.zeros(1, channels, 4, 4, dtype=D)
    t[0, :, 0, 3] = 4.0
    return t


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("term", ["atplus", "gradcam"])
def test_normalised_map_terms_pool_the_teacher_then_normalise(term, per_class):
    s, t = rand(2, 3, 2, 2).relu(), rand(2, 3, 8, 8).relu()
    expected = loop_rmse_per_sample(loop_minmax(s, per_class), loop_minmax(loop_pool(t, 4), per_class))
    value = getattr(losses, term)(s, t, start_dim=2 if per_class else 1)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    # A Student equal to the pooled-then-normalised Teacher has zero loss; normalise-then-pool would not.
    target = loop_minmax(loop_pool(peaked_teacher(), 2), per_class)
    assert getattr(losses, term)(target, peaked_teacher(), start_dim=2 if per_class else 1).item() == pytest.approx(
        0.0, abs=1e-7)
    wrong_order = loop_pool(loop_minmax(peaked_teacher(), per_class), 2)
    assert loop_rmse_per_sample(target, wrong_order) > 0.3


@pytest.mark.parametrize("match", ["l2", "bce", "dice"])
@pytest.mark.parametrize("term", ["fma", "mip", "saliency"])
def test_segmentation_style_terms_pool_the_teacher_then_normalise(term, match):
    s, t = rand(2, 2, 2, 3), rand(2, 2, 4, 6)
    expected = getattr(losses, term)(s, loop_pool(t, 2), match=match)  # same grid: checked against loops above
    assert getattr(losses, term)(s, t, match=match).item() == pytest.approx(expected.item(), rel=1e-9)
    target = loop_minmax(loop_pool(peaked_teacher(), 2), True)
    assert losses.match_maps(target, peaked_teacher()).item() == pytest.approx(0.0, abs=1e-7)
    assert loop_rmse_per_sample(target, loop_pool(loop_minmax(peaked_teacher(), True), 2)) > 0.3


def test_at_pools_the_teacher_then_l2_normalises():
    s, t = rand(2, 1, 2, 2).abs(), rand(2, 1, 4, 4).abs()
    pooled = loop_pool(t, 2)
    assert losses.at(s, t).item() == pytest.approx(at_by_loops(s, pooled), rel=1e-9)
    # An L2-normalised Teacher map (as at_map returns) pooled is no longer of unit norm: the loss re-normalises.
    unit = t / t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert losses.at(s, unit).item() == pytest.approx(at_by_loops(s, pooled), rel=1e-9)
    assert loop_pool(unit, 2).flatten(1).norm(dim=1).max() < 0.99


def test_fm_pools_finer_teacher_features():
    s, t = rand(2, 3, 2, 2), rand(2, 3, 8, 8)
    assert losses.fm(s, t).item() == pytest.approx(loop_rmse(s, loop_pool(t, 4)), rel=1e-9)


def test_safe_sqrt_value_and_gradient():
    x = torch.tensor([0.0, 1e-12, 0.25, 4.0], dtype=D, requires_grad=True)
    y = losses.safe_sqrt(x)
    torch.testing.assert_close(y, x.detach().sqrt())
    (grad,) = torch.autograd.grad(y.sum(), x)
    expected = torch.cat([torch.zeros(1, dtype=D), 0.5 / x.detach()[1:].sqrt()])
    torch.testing.assert_close(grad, expected)


def _grad_of(term, s, t, **kwargs):
    s = s.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(getattr(losses, term)(s, t, **kwargs), s)
    return grad


@pytest.mark.parametrize("term", ["atplus", "gradcam", "fm", "fma", "mip", "saliency", "at"])
@pytest.mark.parametrize("case", ["1x1 grid", "identical maps", "flat maps"])
def test_no_nan_gradient_on_tiny_or_flat_maps(term, case):
    """sqrt(0) had an infinite derivative: 0 * inf = NaN whenever the Student matched its target."""
    if case == "1x1 grid":  # min-max of one cell is 0 for Student and Teacher alike
        s, t = rand(2, 1, 1, 1).abs(), rand(2, 1, 4, 4).abs()
    elif case == "identical maps":
        s = rand(2, 1, 2, 2).abs()
        t = s.clone()
    else:
        s, t = torch.full((2, 1, 2, 2), 3.0, dtype=D), torch.full((2, 1, 4, 4), 5.0, dtype=D)
    grad = _grad_of(term, s, t)
    assert torch.isfinite(grad).all()
    if term != "fm" or case == "identical maps":  # fm compares raw, unnormalised features
        assert grad.abs().max() == 0  # the Student matches its normalised target: a minimum of the RMSE


@pytest.mark.parametrize("term", ["atplus", "fm"])
def test_safe_root_keeps_the_gradient_of_the_definition_away_from_zero(term):
    s, t = rand(2, 3, 2, 2).relu(), rand(2, 3, 4, 4).relu()
    grad = _grad_of(term, s, t)
    pooled = loop_pool(t, 2)
    s_ref = s.clone().requires_grad_(True)
    if term == "fm":
        reference = (s_ref - pooled).pow(2).mean().sqrt()
    else:
        def n(m):
            flat = m.flatten(1)
            low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
            return (m - low) / (high - low + 1e-8)
        reference = (n(s_ref) - n(pooled)).pow(2).flatten(1).mean(1).sqrt().mean()
    (expected,) = torch.autograd.grad(reference, s_ref)
    torch.testing.assert_close(grad, expected)
