"""Distiller and teacher_targets: validation, gradient flow, regressors, cached targets, D4."""

import pytest
import torch
import torch.nn.functional as F

from wsidistill.distill import (
    TERMS,
    Distiller,
    d4_transform,
    losses,
    student_input_from,
    teacher_targets,
)
from wsidistill.distill.terms import attention_map
from wsidistill.models import build_model

ALL_TERMS = {t: 1.0 for t in TERMS}


@pytest.fixture
def pair():
    """SmallCNN Teacher (stride 2, 8x8 input) and a native Student at 1/2 magnification (stride 1)."""
    torch.manual_seed(0)
    teacher = build_model("smallcnn", 3, output_stride=2).eval()
    student = build_model("smallcnn", 3, output_stride=1)
    x = torch.randn(2, 3, 8, 8)
    return teacher, student, x, student_input_from(x, "native", 2), torch.tensor([0, 2])


def test_unknown_term_and_option_raise_naming_valid_ones(pair):
    teacher, student, *_ = pair
    with pytest.raises(ValueError, match="atplus"):
        Distiller(student, {"ce": 1, "attention": 1}, teacher=teacher, num_classes=3)
    with pytest.raises(ValueError, match="kd_temperature"):
        Distiller(student, {"ce": 1}, teacher=teacher, num_classes=3, options={"temperature": 2})
    with pytest.raises(ValueError, match="atplus"):
        teacher_targets(teacher, torch.zeros(1, 3, 8, 8), ["attention"])
    with pytest.raises(ValueError, match="non-zero"):
        Distiller(student, {"ce": 0}, teacher=teacher, num_classes=3)


@pytest.mark.parametrize(
    ("term", "options", "call"),
    [
        ("atplus", {"attention_norm": "class"}, lambda s, t: losses.atplus(s, t, start_dim=2)),
        ("gradcam", {}, lambda s, t: losses.gradcam(s, t, start_dim=1)),
        ("fma", {"fma_match": "dice"}, lambda s, t: losses.fma(s, t, match="dice")),
        ("mip", {"mip_match": "bce"}, lambda s, t: losses.mip(s, t, match="bce")),
    ],
)
def test_options_reach_the_terms(pair, term, options, call):
    teacher, student, x, xs, y = pair
    student.eval()
    distiller = Distiller(student, {term: 1.0}, teacher=teacher, num_classes=3, options=options)
    targets = teacher_targets(teacher, x, [term])
    student_map = attention_map(term, student(xs), student.classifier.weight, xs, create_graph=False)
    assert distiller(xs, y, targets)[1][term] == pytest.approx(call(student_map, targets[term]).item(), rel=1e-6)


def test_ce_only_needs_no_teacher(pair):
    _, student, _, xs, y = pair
    loss, logs = Distiller(student, {"ce": 1}, num_classes=3)(xs, y, None)
    assert set(logs) == {"ce"} and loss.item() == pytest.approx(logs["ce"])
    with pytest.raises(ValueError, match="Teacher"):
        Distiller(student, {"ce": 1, "atplus": 10}, num_classes=3)


def test_missing_targets_raise(pair):
    teacher, student, _, xs, y = pair
    distiller = Distiller(student, {"ce": 1, "atplus": 10}, teacher=teacher, num_classes=3)
    with pytest.raises(ValueError, match="atplus"):
        distiller(xs, y, None)


def test_teacher_targets_shapes_and_eval_mode(pair):
    teacher, _, x, _, _ = pair
    targets = teacher_targets(teacher, x, TERMS)
    shapes = {k: tuple(v.shape) for k, v in targets.items()}
    assert shapes == {
        "logits": (2, 3), "features": (2, 256, 4, 4), "at": (2, 1, 4, 4), "gradcam": (2, 3, 4, 4),
        "atplus": (2, 3, 4, 4), "fma": (2, 1, 4, 4), "mip": (2, 1, 4, 4), "saliency": (2, 3, 8, 8),
    }
    assert not any(v.requires_grad for v in targets.values())
    with pytest.raises(ValueError, match="eval"):
        teacher_targets(teacher.train(), x, ["atplus"])


def test_weighted_total_and_gradients_reach_student_never_teacher(pair):
    teacher, student, x, xs, y = pair
    weights = {"ce": 1.0, "fm": 0.1, "atplus": 10.0, "saliency": 0.5}
    distiller = Distiller(student, weights, teacher=teacher, num_classes=3)
    before = [p.detach().clone() for p in teacher.parameters()]
    optimiser = torch.optim.SGD(distiller.parameters(), lr=0.1)
    loss, logs = distiller(xs, y, teacher_targets(teacher, x, distiller.terms))
    assert loss.item() == pytest.approx(sum(weights[k] * logs[k] for k in weights), rel=1e-5)
    loss.backward()
    optimiser.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert student.classifier.weight.grad.abs().sum() > 0
    assert student.blocks[3][0][0].weight.grad.abs().sum() > 0


def test_atplus_gradient_flows_through_the_student_map(pair):
    teacher, student, x, xs, y = pair
    distiller = Distiller(student, {"atplus": 1.0}, teacher=teacher, num_classes=3)
    loss, _ = distiller(xs, y, teacher_targets(teacher, x, distiller.terms))
    loss.backward()
    assert student.classifier.weight.grad.abs().sum() > 0, "the closed-form map depends on the classifier"
    assert student.stem[0].weight.grad.abs().sum() > 0


def test_regressors_handle_channel_mismatch_and_are_trained(pair):
    _, _, x, _, y = pair
    torch.manual_seed(0)
    teacher = build_model("resnet18", 3).eval()
    student = build_model("smallcnn", 3, output_stride=8)
    big = F.interpolate(x, size=32)
    distiller = Distiller(student, {"ce": 1, "fm": 1, "sr": 1, "atplus": 1}, teacher=teacher, num_classes=3)
    assert distiller.fm_regressor.weight.shape == (512, 256, 1, 1)
    assert distiller.sr_regressor.weight.shape == (512, 256)
    trained = {id(p) for p in distiller.parameters()}
    assert {id(p) for p in distiller.fm_regressor.parameters()} <= trained
    assert not trained & {id(p) for p in teacher.parameters()}
    loss, logs = distiller(big, y, teacher_targets(teacher, big, distiller.terms))
    loss.backward()
    assert distiller.fm_regressor.weight.grad.abs().sum() > 0
    assert distiller.sr_regressor.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    same = Distiller(build_model("smallcnn", 3), {"fm": 1, "sr": 1}, teacher=build_model("smallcnn", 3), num_classes=3)
    assert same.fm_regressor is None and same.sr_regressor is None


def test_cached_targets_give_the_on_the_fly_loss(pair, tmp_path):
    teacher, student, x, xs, y = pair
    distiller = Distiller(student.eval(), ALL_TERMS, teacher=teacher, num_classes=3)
    on_the_fly, logs = distiller(xs, y, teacher_targets(teacher, x, distiller.terms))
    torch.save(teacher_targets(teacher, x, distiller.terms), tmp_path / "targets.pt")
    cached, cached_logs = distiller(xs, y, torch.load(tmp_path / "targets.pt"))
    assert cached.item() == pytest.approx(on_the_fly.item(), rel=1e-6)
    assert cached_logs == pytest.approx(logs, rel=1e-6)
    per_patch = [teacher_targets(teacher, x[i : i + 1], distiller.terms) for i in range(2)]
    stacked = {k: torch.cat([p[k] for p in per_patch]) for k in per_patch[0]}
    assert distiller(xs, y, stacked)[1] == pytest.approx(logs, rel=1e-5)


@pytest.mark.parametrize("k", range(8))
def test_transformed_cached_targets_equal_targets_of_transformed_patch(pointwise_net, k):
    teacher = pointwise_net().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    direct = teacher_targets(teacher, d4_transform(x, k), TERMS)
    # Transforming the spatial entries (ndim >= 3) of the untransformed patch's targets; logits are invariant.
    cached = {name: d4_transform(t, k) if t.dim() >= 3 else t for name, t in teacher_targets(teacher, x, TERMS).items()}
    for name in direct:
        torch.testing.assert_close(cached[name], direct[name])


def test_student_input_from():
    x = torch.randn(1, 3, 8, 8)
    native = student_input_from(x, "native", 4)
    assert native.shape == (1, 3, 2, 2)
    torch.testing.assert_close(native[0, :, 1, 0], x[0, :, 4:8, 0:4].mean(dim=(1, 2)))
    up = student_input_from(x, "upsampled", 4)
    assert up.shape == x.shape
    torch.testing.assert_close(up[..., 0, 0], native[..., 0, 0])
    torch.testing.assert_close(up[..., -1, -1], native[..., -1, -1])
    with pytest.raises(ValueError, match="native"):
        student_input_from(x, "bicubic", 2)
