"""kd_ref and AT+ with scale-free normalisation, against their definitions."""

import itertools
import math

import pytest
import torch

from wsidistill.distill import TERMS, Distiller, losses, student_input_from, teacher_targets
from wsidistill.distill.terms import target_keys
from wsidistill.models import build_model

D = torch.float64
SCALE_FREE = ("l2", "sum", "pearson")


def test_kd_ref_is_the_reference_cross_entropy_at_temperature_one():
    s, t = torch.randn(3, 4, dtype=D), torch.randn(3, 4, dtype=D)
    total = 0.0
    for b in range(3):
        p_t = [math.exp(v) / sum(math.exp(u) for u in t[b].tolist()) for v in t[b].tolist()]
        log_z = math.log(sum(math.exp(u) for u in s[b].tolist()))
        total += -sum(p * (v - log_z) for p, v in zip(p_t, s[b].tolist()))
    assert losses.kd_ref(s, t).item() == pytest.approx(total / 3, rel=1e-9)
    assert TERMS["kd_ref"].target == "logits" and not TERMS["kd_ref"].options  # nothing to set: T = 1, no T^2


def loop_normalise(m, normalise, per_class):
    """Each group's values (sample, or sample and class) normalised by the definition, loop by loop."""
    out = torch.empty_like(m)
    for b in range(m.shape[0]):
        for group in [(c,) for c in range(m.shape[1])] if per_class else [tuple(range(m.shape[1]))]:
            cells = list(itertools.product(group, range(m.shape[2]), range(m.shape[3])))
            values = [m[b][cell].item() for cell in cells]
            mean = sum(values) / len(values)
            scale = {"l2": math.sqrt(sum(v * v for v in values) / len(values)), "sum": mean,
                     "pearson": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}[normalise]
            for cell, v in zip(cells, values):
                out[b][cell] = ((v - mean) if normalise == "pearson" else v) / (scale + 1e-8)
    return out


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("normalise", SCALE_FREE)
def test_atplus_scale_free_by_definition(normalise, per_class):
    s, t = torch.rand(2, 3, 2, 2, dtype=D), torch.rand(2, 3, 2, 2, dtype=D)
    ns, nt = loop_normalise(s, normalise, per_class), loop_normalise(t, normalise, per_class)
    if normalise == "pearson":  # 1 - Pearson r per group, by the textbook formula
        rs = []
        for b in range(2):
            for group in [[c] for c in range(3)] if per_class else [[0, 1, 2]]:
                x, y = s[b, group].flatten().tolist(), t[b, group].flatten().tolist()
                mx, my = sum(x) / len(x), sum(y) / len(y)
                cov = sum((a - mx) * (c - my) for a, c in zip(x, y))
                rs.append(cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((c - my) ** 2 for c in y)))
        expected = 1 - sum(rs) / len(rs)
    else:
        expected = torch.stack([(ns[b] - nt[b]).pow(2).mean().sqrt() for b in range(2)]).mean().item()
    value = losses.atplus(s, t, start_dim=2 if per_class else 1, normalise=normalise)
    torch.testing.assert_close(losses.normalise_map(s, normalise, start_dim=2 if per_class else 1), ns)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert losses.atplus(3.5 * s, t, normalise=normalise).item() == pytest.approx(
        losses.atplus(s, t, normalise=normalise).item(), rel=1e-6)  # scale-free


def bump(cy: float, cx: float, width: float = 8.0) -> torch.Tensor:
    """A broad Teacher map on a 4x4 grid, (1, 1, 4, 4)."""
    i = torch.arange(4, dtype=D)
    return torch.exp(-((i[:, None] - cy) ** 2 + (i[None, :] - cx) ** 2) / width)[None, None]


def test_a_spike_beats_a_flat_map_under_minmax_only():
    target, spike = bump(1.5, 1.5), torch.zeros(1, 1, 4, 4, dtype=D)
    spike[0, 0, 1, 1] = 1
    flat = torch.full_like(target, 0.3)
    assert losses.atplus(spike, target).item() < losses.atplus(flat, target).item()  # min-max: the spike pays
    for normalise in ("l2", "sum"):
        flat_loss = losses.atplus(flat, target, normalise=normalise).item()
        assert flat_loss == pytest.approx(losses.atplus(7 * flat, target, normalise=normalise).item())  # any constant
        assert losses.atplus(spike, target, normalise=normalise).item() > 3 * flat_loss


@pytest.mark.parametrize("normalise", SCALE_FREE)
def test_the_mean_map_beats_a_fixed_spike(normalise):
    """A Student that cannot see where the Teacher looks: one fixed map for every patch."""
    torch.manual_seed(0)
    targets = torch.cat([bump(*(3 * torch.rand(2, dtype=D)).tolist(), width=2.0) for _ in range(32)])
    mean = losses.normalise_map(targets, normalise).mean(0, keepdim=True).expand_as(targets)
    spike = torch.zeros_like(targets).flatten(2)
    spike[..., mean[0, 0].flatten().argmax()] = 1
    spike = spike.view_as(targets)
    assert losses.atplus(mean, targets, normalise=normalise) < losses.atplus(spike, targets, normalise=normalise)


def test_the_mean_map_is_the_best_fixed_map_under_pearson_not_minmax():
    torch.manual_seed(1)
    targets = torch.cat([bump(*(3 * torch.rand(2, dtype=D)).tolist(), width=2.0) for _ in range(16)])

    def gradient(normalise):
        fixed = losses.normalise_map(targets, normalise).mean(0, keepdim=True).requires_grad_(True)
        (grad,) = torch.autograd.grad(losses.atplus(fixed.expand_as(targets), targets, normalise=normalise), fixed)
        return grad.abs().max().item()

    assert gradient("pearson") < 1e-6  # stationary: the best fixed map is the mean z-scored map
    assert gradient("minmax") > 1e-2  # min-max rewards moving away from the mean map


@pytest.mark.parametrize("term", ["atplus_l2", "atplus_sum", "atplus_pearson", "kd_ref"])
def test_new_terms_train_through_the_distiller(term):
    torch.manual_seed(0)
    teacher, student = build_model("smallcnn", 3, output_stride=2).eval(), build_model("smallcnn", 3, output_stride=1)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    targets = teacher_targets(teacher, x, [term])
    assert target_keys([term]) == (["atplus"] if term.startswith("atplus") else ["logits"])
    assert set(target_keys([term])) <= set(targets)
    loss, logs = Distiller(student, {"ce": 1, term: 10}, teacher=teacher, num_classes=3)(
        student_input_from(x, "native", 2), y, targets)
    loss.backward()
    assert math.isfinite(logs[term]) and student.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("normalise", SCALE_FREE)
@pytest.mark.parametrize("case", ["1x1 grid", "flat maps", "zero map"])
def test_no_nan_gradient_on_degenerate_maps(normalise, case):
    t = torch.rand(2, 1, 4, 4, dtype=D)
    s = {"1x1 grid": torch.rand(2, 1, 1, 1, dtype=D), "flat maps": torch.full((2, 1, 2, 2), 3.0, dtype=D),
         "zero map": torch.zeros(2, 1, 2, 2, dtype=D)}[case].requires_grad_(True)
    (grad,) = torch.autograd.grad(losses.atplus(s, t, normalise=normalise), s)
    assert torch.isfinite(grad).all()
