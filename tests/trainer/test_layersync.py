import math

import pytest
import torch

from trainer.layersync import LayerSync, layersync_loss


def test_loss_matches_a_hand_computed_case():
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    teacher = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    loss, similarity = layersync_loss(student, teacher, weight=0.2)
    expected = (1.0 + 1.0 / math.sqrt(2.0)) / 2.0  # token cosines 1 and 1/√2, averaged
    assert similarity.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(-0.2 * expected, abs=1e-6)


def test_teacher_gets_no_gradient_and_student_does():
    student = torch.randn(2, 5, 8, requires_grad=True)
    teacher = torch.randn(2, 5, 8, requires_grad=True)
    loss, _ = layersync_loss(student, teacher)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_gradient_raises_similarity():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 8, requires_grad=True)
    teacher = torch.randn(2, 5, 8)
    loss, before = layersync_loss(student, teacher)
    loss.backward()
    with torch.no_grad():
        _, after = layersync_loss(student - 0.5 * student.grad, teacher)
    assert after > before


def test_4d_is_the_3d_loss_over_frames_times_patches():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    loss4, sim4 = layersync_loss(student, teacher)
    loss3, sim3 = layersync_loss(student.reshape(2, 12, 8), teacher.reshape(2, 12, 8))
    assert sim4.item() == pytest.approx(sim3.item(), abs=1e-6)
    assert loss4.item() == pytest.approx(loss3.item(), abs=1e-6)


def test_identical_states_give_similarity_one_and_no_gradient():
    hidden = torch.randn(2, 4, 8, requires_grad=True)
    loss, similarity = layersync_loss(hidden, hidden)
    loss.backward()
    assert similarity.item() == pytest.approx(1.0, abs=1e-6)
    assert hidden.grad.abs().max() < 1e-6


@pytest.mark.parametrize(
    "student_shape, teacher_shape",
    [((2, 8), (2, 8)), ((1, 2, 3, 4, 5), (1, 2, 3, 4, 5)), ((2, 4, 8), (2, 4, 16)), ((2, 4, 8), (2, 2, 2, 8))],
)
def test_unusable_shapes_name_both_shapes(student_shape, teacher_shape):
    with pytest.raises(ValueError) as info:
        layersync_loss(torch.zeros(student_shape), torch.zeros(teacher_shape))
    assert str(tuple(student_shape)) in str(info.value)
    assert str(tuple(teacher_shape)) in str(info.value)


@pytest.mark.parametrize("weight", [0.0, -0.1])
def test_weight_must_be_positive(weight):
    with pytest.raises(ValueError, match="must be > 0"):
        layersync_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), weight=weight)


def test_every_pair_counts():
    torch.manual_seed(0)
    states = {i: torch.randn(2, 4, 8, requires_grad=True) for i in range(4)}
    regularizer = LayerSync([(1, 3), (2, 4)], depth=4, weight=0.5)  # user numbering: blocks 0→2 and 1→3
    assert regularizer.pairs == [(0, 2), (1, 3)]
    loss, similarity, per_pair = regularizer(states)
    expected = [layersync_loss(states[s], states[t])[1] for s, t in [(0, 2), (1, 3)]]
    assert [p.item() for p in per_pair] == pytest.approx([e.item() for e in expected])
    assert similarity.item() == pytest.approx(sum(e.item() for e in expected) / 2)
    assert loss.item() == pytest.approx(-0.5 * similarity.item())
    loss.backward()
    # both students get gradient, not just the last pair's
    assert states[0].grad.abs().sum() > 0 and states[1].grad.abs().sum() > 0
    assert states[2].grad is None and states[3].grad is None


def test_the_compiled_similarity_matches_the_eager_one():
    """The training loop compiles the similarity on GPUs; the math must not change."""
    states = {i: torch.randn(2, 8, 16, requires_grad=True) for i in range(4)}
    eager = LayerSync([(2, 4)], depth=4)
    loss, similarity, _ = eager(states)
    loss.backward()
    eager_grad, states[1].grad = states[1].grad.clone(), None
    compiled = LayerSync([(2, 4)], depth=4)
    why_not = compiled.compile(torch.device("cpu"))
    if why_not:
        pytest.skip(f"torch.compile is not usable on this machine: {why_not}")
    loss_c, similarity_c, _ = compiled(states)
    loss_c.backward()
    assert similarity_c.item() == pytest.approx(similarity.item(), abs=1e-6)
    torch.testing.assert_close(states[1].grad, eager_grad, rtol=1e-5, atol=1e-7)
    assert states[3].grad is None  # the teacher stays detached when compiled
