"""ProGrad's two pieces: the gradient projection, and that the first step from the
hand-crafted prompt is CoOp's (the general-knowledge loss has zero gradient there)."""
from __future__ import annotations

import pytest
import torch

from medkit.methods import CoOp, ProGrad
from medkit.methods.prograd import general_knowledge_loss, project_conflicting

NAMES = ["round", "oval", "plate"]


def test_projection_removes_only_the_conflicting_component():
    g, general = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])
    projected = project_conflicting(g, general)
    assert torch.equal(projected, torch.tensor([1.0, 0.0])) and float(projected @ general) == 0.0
    assert torch.equal(project_conflicting(torch.tensor([1.0, 2.0]), general), torch.tensor([1.0, 2.0]))
    assert torch.equal(project_conflicting(g, torch.zeros(2)), g)
    half = project_conflicting(g, general, strength=0.5)
    assert torch.allclose(half, torch.tensor([1.0, -1.0]))


def test_general_knowledge_loss_is_soft_cross_entropy():
    logits, zs = torch.randn(4, 3), torch.randn(4, 3)
    expected = -(zs.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(general_knowledge_loss(logits, zs), expected)
    assert general_knowledge_loss(logits, zs, temperature=2.0) != general_knowledge_loss(logits, zs)


@pytest.mark.parametrize("family", ["native", "hf"])
def test_step_is_coops_cross_entropy_step_projected_off_the_zero_shot_direction(adapters, family):
    ad = adapters[family]
    x = torch.nn.functional.normalize(torch.randn(6, ad.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = {}
    for key, m in (("coop", CoOp(ad, NAMES, n_ctx=None, ctx_init="a photo of a")),
                   ("strength 0", ProGrad(ad, NAMES, strength=0.0))):
        m.train()
        terms = m.loss_terms(m(x), y)
        m.backward_step(terms)
        grads[key] = m.context.ctx.grad.clone()
    # with no projection the step is CoOp's: the general-knowledge gradient leaves the CE one alone
    torch.testing.assert_close(grads["strength 0"], grads["coop"], rtol=0, atol=0)
    # away from the hand-crafted prompt, the step never points against the zero-shot direction
    m = ProGrad(ad, NAMES).train()
    with torch.no_grad():
        m.context.ctx.add_(0.5 * torch.randn(m.context.ctx.shape, generator=torch.Generator().manual_seed(1)))
    terms = m.loss_terms(m(x), y)
    assert set(terms) == {"ce", "kl"} and float(terms["kl"].detach()) > 0
    general = torch.autograd.grad(terms["kl"], [m.context.ctx], retain_graph=True)[0]
    plain = torch.autograd.grad(terms["ce"], [m.context.ctx], retain_graph=True)[0]
    m.backward_step(terms)
    dot = float((plain * general).sum())
    assert float((m.context.ctx.grad * general).sum()) >= -1e-6 * abs(dot)
    if dot < 0:  # a conflict: the step changed
        assert not torch.allclose(m.context.ctx.grad, plain)
