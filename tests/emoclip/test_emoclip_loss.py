"""Symmetric InfoNCE against a float64 loop reference, forward and gradient."""
import numpy as np
import pytest
import torch

from affaccel.emoclip.loss import clip_loss, clip_loss_from_embeddings, clip_loss_ref


@pytest.mark.parametrize("b,d", [(2, 3), (5, 8), (17, 16)])
def test_loss_matches_reference(b, d):
    g = torch.Generator().manual_seed(b)
    v, t = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    scale = torch.tensor(1.7)
    got = clip_loss_from_embeddings(v, t, scale)
    assert float(got) == pytest.approx(clip_loss_ref(v.numpy(), t.numpy(), 1.7), rel=1e-5)


def test_duplicate_texts_count_as_negatives():
    v = torch.randn(4, 6, dtype=torch.float64)
    t = torch.randn(2, 6, dtype=torch.float64)[[0, 0, 1, 1]]      # class-level: repeated texts
    ref = clip_loss_ref(v.numpy(), t.numpy(), 0.5)
    assert float(clip_loss_from_embeddings(v, t, torch.tensor(0.5))) == pytest.approx(ref, rel=1e-6)
    assert ref > np.log(2) / 2    # a repeated text can never be told apart from its twin


def test_gradient_matches_autograd_of_an_independent_formula():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)

    def independent(v, t, s):
        vn, tn = v / v.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
        lg = s.exp() * vn @ tn.T
        return (-(lg.diag() - lg.logsumexp(1)).mean() - (lg.diag() - lg.logsumexp(0)).mean()) / 2

    w = 3.5   # grad_output != 1
    ours = torch.autograd.grad(w * clip_loss(s.exp() * torch.nn.functional.normalize(v, dim=1)
                                             @ torch.nn.functional.normalize(t, dim=1).T), (v, t, s))
    ref = torch.autograd.grad(w * independent(v, t, s), (v, t, s))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


def test_perfect_alignment_gives_low_loss_and_bad_shape_fails():
    e = torch.eye(4) * 10
    assert float(clip_loss(e)) < 1e-3
    with pytest.raises(ValueError, match="square"):
        clip_loss(torch.zeros(2, 3))
