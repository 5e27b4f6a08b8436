"""Divergence math against hand-computed references, masks, and config validation."""

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from sdft_ops.engine import SDFTConfig, TeacherContext
from sdft_ops.engine.losses import completion_mask, sequence_mean, token_divergence

# two 3-way distributions, written out so the references below can be checked by hand
P_T = [0.7, 0.2, 0.1]  # teacher
P_S = [0.5, 0.3, 0.2]  # student


def _logits(p):
    return torch.tensor([[p]], dtype=torch.float64).log()  # (1, 1, V); log p are valid logits


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_forward_and_reverse_kl_match_hand_computation():
    fwd = token_divergence(_logits(P_S), _logits(P_T), "forward_kl").item()
    rev = token_divergence(_logits(P_S), _logits(P_T), "reverse_kl").item()
    # KL(T‖S) = .7 ln(.7/.5) + .2 ln(.2/.3) + .1 ln(.1/.2) = 0.0851...
    assert fwd == pytest.approx(_kl(P_T, P_S), abs=1e-6) == pytest.approx(0.08512, abs=1e-4)
    assert rev == pytest.approx(_kl(P_S, P_T), abs=1e-6)
    assert fwd != pytest.approx(rev, abs=1e-3)


def test_jsd_matches_hand_computation():
    beta = 0.3
    mix = [beta * t + (1 - beta) * s for t, s in zip(P_T, P_S)]
    expected = beta * _kl(P_T, mix) + (1 - beta) * _kl(P_S, mix)
    got = token_divergence(_logits(P_S), _logits(P_T), "jsd", jsd_beta=beta).item()
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_top_k_equals_full_vocab_at_k_equal_vocab_and_bounds_it_below(divergence):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    full = token_divergence(student, teacher, divergence)
    at_v = token_divergence(student, teacher, divergence, "top_k", top_k=11)
    coarse = token_divergence(student, teacher, divergence, "top_k", top_k=3)
    torch.testing.assert_close(at_v, full, atol=1e-5, rtol=1e-5)
    assert bool((coarse <= full + 1e-6).all()) and not torch.allclose(coarse, full)


def test_sampled_token_value_and_score_function_gradient():
    student = _logits(P_S).clone().float().requires_grad_(True)
    y = torch.tensor([[1]])
    d = token_divergence(student, _logits(P_T).float(), "reverse_kl", "sampled_token", sampled_ids=y)
    assert d.item() == pytest.approx(math.log(0.3 / 0.2), abs=1e-6)
    d.sum().backward()
    # gradient = d · ∇ log softmax(z)_y = d · (onehot(y) − p_S)
    expected = math.log(0.3 / 0.2) * (torch.tensor([0.0, 1.0, 0.0]) - torch.tensor(P_S))
    torch.testing.assert_close(student.grad[0, 0], expected, atol=1e-6, rtol=1e-6)


def test_chunked_forward_kl_equals_autograd_through_log_softmax():
    """Several chunks per row (T > CHUNK), a non-contiguous view like the model's logits[:, :-1],
    and an uneven upstream gradient (the per-sequence mask weights)."""
    torch.manual_seed(0)
    full_s = torch.randn(3, 71, 50, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 70, 50, dtype=torch.float64)
    upstream = torch.rand(3, 70, dtype=torch.float64)
    got = token_divergence(full_s[:, :-1], teacher, "forward_kl")
    (got * upstream).sum().backward()
    ref_s = full_s.detach().clone().requires_grad_(True)
    s, t = F.log_softmax(ref_s[:, :-1].float(), -1), F.log_softmax(teacher.float(), -1)
    ref = (t.exp() * (t - s)).sum(-1)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(full_s.grad, ref_s.grad, atol=1e-6, rtol=1e-5)
    assert full_s.grad[:, -1].abs().sum() == 0  # the dropped last position gets no gradient


def test_no_gradient_reaches_the_teacher_logits():
    student = torch.randn(1, 4, 7, requires_grad=True)
    teacher = torch.randn(1, 4, 7, requires_grad=True)
    token_divergence(student, teacher, "jsd").sum().backward()
    assert student.grad is not None and teacher.grad is None


def test_completion_mask_skips_first_tokens_and_everything_after_eos():
    eos, pad = 2, 0
    ids = torch.tensor([[5, 6, 7, 8, 2, 0, 0],   # EOS at 4: 0..4 valid, minus the first 3
                        [5, 6, 7, 8, 9, 9, 9],   # no EOS: all valid after the skip
                        [5, 2, 0, 0, 0, 0, 0]])  # ends within the skip: empty
    mask = completion_mask(ids, eos, skip_first=3)
    assert mask.tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1], [0] * 7]
    assert completion_mask(ids, eos, 0)[0].tolist() == [1, 1, 1, 1, 1, 0, 0]
    per_token = torch.arange(21, dtype=torch.float32).view(3, 7).requires_grad_(True)
    means = sequence_mean(per_token, mask)
    assert means.tolist() == [3.5, 11.5, 0.0]  # (3+4)/2, (10+11+12+13)/4
    means.sum().backward()  # the empty row is a zero still attached to the graph
    assert per_token.grad[2].abs().sum() == 0 and per_token.grad[0, 3] == 0.5


def test_invalid_config_combinations_say_how_to_fix():
    with pytest.raises(ValidationError, match="only unbiased for divergence 'reverse_kl'"):
        SDFTConfig(estimator="sampled_token")
    with pytest.raises(ValidationError, match="multiple of grad_accum_steps"):
        SDFTConfig(prompts_per_step=6, grad_accum_steps=4)
    with pytest.raises(ValidationError, match="top_k' supports"):
        SDFTConfig(divergence="jsd", estimator="top_k")
    with pytest.raises(ValidationError, match="both"):
        TeacherContext(preset="custom", template="only {question}")
    with pytest.raises(ValidationError, match="only used with preset 'custom'"):
        TeacherContext(preset="paper", template="{question} {demonstration}")
    assert SDFTConfig(seed=1).fingerprint() != SDFTConfig(seed=2).fingerprint()
    assert SDFTConfig(checkpoint_every=5).fingerprint() == SDFTConfig().fingerprint()
