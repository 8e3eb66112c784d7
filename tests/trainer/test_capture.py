import pytest
import torch
from torch import nn

from trainer.capture import Block, HiddenStateCapture, tensor_output, tuple_element
from trainer.layersync import LayerSync
from trainer.models.demo import blocks, predict
from trainer.models.demo_dit import DemoDiT


def tiny_model(seed=0) -> DemoDiT:
    torch.manual_seed(seed)
    model = DemoDiT(hidden_size=32, num_layers=6, num_attention_heads=2)
    # adaLN-Zero starts every block as the identity; perturb so blocks differ and gradients flow
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (4,), generator=g)
    return torch.randn(4, 1, 16, 16, generator=g), torch.rand(4, generator=g), {"class_labels": labels}


def test_keeps_only_the_requested_blocks_and_releases_them():
    model = tiny_model()
    capture = HiddenStateCapture(blocks(model), [1, 4])
    x, t, y = inputs()
    with capture.capture() as states:
        predict(model, x, t, y)
    assert sorted(states) == [1, 4]
    assert states[1].shape == (4, 64, 32)
    capture.release()
    assert states == {}
    predict(model, x, t, y)  # disarmed: a forward outside capture() stores nothing
    assert states == {}
    capture.remove()
    assert all(not b.module._forward_hooks for b in blocks(model))


def test_captured_states_are_the_block_outputs():
    model = tiny_model()
    seen = {}
    handle = model.blocks[2].register_forward_hook(lambda m, a, out: seen.setdefault("out", out.detach().clone()))
    capture = HiddenStateCapture(blocks(model), [2])
    with capture.capture() as states:
        predict(model, *inputs())
    assert torch.equal(states[2].detach(), seen["out"])
    handle.remove()


def layersync_grads(model, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of the LayerSync term alone (student 2 → teacher 5, user numbering)."""
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.zero_grad()
    regularizer = LayerSync([(2, 5)], depth=6)
    capture = HiddenStateCapture(blocks(model), regularizer.blocks)
    x, t, y = inputs()
    with capture.capture() as states:
        out = predict(model, x, t, y)
    loss, similarity, _ = regularizer(states)
    capture.release()
    (loss + 0.0 * out.sum()).backward()  # the output joins the graph as in training, with no gradient
    capture.remove()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = layersync_grads(tiny_model(), checkpointing=False)
    checkpointed = layersync_grads(tiny_model(), checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_student_blocks_learn_from_layersync_and_deeper_blocks_do_not(checkpointing):
    grads = layersync_grads(tiny_model(), checkpointing)
    def norm(prefix):
        return sum(g.abs().sum().item() for n, g in grads.items() if n.startswith(prefix))
    assert norm("blocks.0.") > 0 and norm("blocks.1.") > 0  # up to the student (block 1, 0-based)
    for deeper in range(2, 6):  # between student and teacher, and the teacher itself: detached
        assert norm(f"blocks.{deeper}.") == 0


@pytest.mark.parametrize("early_stop", [True, False])
def test_recomputation_in_backward_does_not_overwrite_or_keep_states(early_stop):
    model = tiny_model()
    model.enable_gradient_checkpointing()
    runs, outputs = [], []
    model.blocks[3].register_forward_pre_hook(lambda m, a: runs.append(1))
    model.blocks[3].register_forward_hook(lambda m, a, out: outputs.append(out))
    capture = HiddenStateCapture(blocks(model), [3])
    with torch.utils.checkpoint.set_checkpoint_early_stop(early_stop):
        with capture.capture() as states:
            out = predict(model, *inputs())
        kept = states[3]
        out.sum().backward()
    assert len(runs) == 2  # the forward, and the recomputation in backward
    if not early_stop:
        assert len(outputs) == 2  # the full recomputation reached the block's output hooks too
    assert list(states) == [3] and states[3] is kept  # the recomputation stored nothing
    capture.release()


def test_tuple_outputs_use_the_family_element():
    class Joint(nn.Module):
        def forward(self, x):
            return x * 2, x + 1  # (text, image)

    joint = Joint()
    capture = HiddenStateCapture([Block(joint, tuple_element(1)), Block(nn.Identity(), tensor_output)], [0])
    x = torch.ones(1, 2, 3)
    with capture.capture() as states:
        joint(x)
    assert torch.equal(states[0], x + 1)
