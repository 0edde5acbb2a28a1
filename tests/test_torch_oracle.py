"""An independent oracle: PyTorch autograd on the same weights (optional; skipped without torch).

PyTorch is never imported by lora_np itself; here it only re-derives our gradients.
"""

import numpy as np
import pytest

import lora_np as ln
from lora_np.train import cross_entropy

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def test_lora_linear_matches_autograd():
    rng = np.random.default_rng(0)
    layer = ln.LoRALinear(7, 5, 3, 6.0, dtype=np.float64, rng=0)
    layer.B[...] = rng.standard_normal(layer.B.shape)
    x, dy = rng.standard_normal((4, 2, 7)), rng.standard_normal((4, 2, 5))
    y = layer.forward(x)
    dx = layer.backward(dy)
    tx, tA, tB = t(x, True), t(layer.A, True), t(layer.B, True)
    ty = tx @ t(layer.W) + t(layer.b) + layer.scaling * (tx @ tA) @ tB
    (ty * t(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    for ours, theirs in ((dx, tx), (layer.grads["A"], tA), (layer.grads["B"], tB)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


def torch_lm(params, idx, cfg):
    """The same pre-LN transformer written with torch ops; params maps our names to tensors."""
    B, T = idx.shape
    C, H = cfg.d_model, cfg.n_head
    x = params["tok_emb.table"][idx] + params["pos_emb.table"][:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(cfg.n_layer):
        p = lambda name: params[f"blocks.{i}.{name}"]  # noqa: E731
        h = TF.layer_norm(x, (C,), p("ln1.gamma"), p("ln1.beta"), eps=1e-5)
        q, k, v = (h @ p(f"attn.{n}.W") + p(f"attn.{n}.b") for n in "qkv")
        q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / np.sqrt(C // H)
        y = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1) @ v
        x = x + y.transpose(1, 2).reshape(B, T, C) @ p("attn.o.W") + p("attn.o.b")
        h = TF.layer_norm(x, (C,), p("ln2.gamma"), p("ln2.beta"), eps=1e-5)
        h = TF.gelu(h @ p("mlp.layers.0.W") + p("mlp.layers.0.b"), approximate="tanh")
        x = x + h @ p("mlp.layers.1.W") + p("mlp.layers.1.b")
    x = TF.layer_norm(x, (C,), params["ln_f.gamma"], params["ln_f.beta"], eps=1e-5)
    return x @ params["head.W"] + params["head.b"]


def test_transformer_matches_autograd():
    cfg = ln.TransformerConfig(vocab_size=9, block_size=6, d_model=8, n_head=2, n_layer=2)
    model = ln.TransformerLM(cfg, dtype=np.float64, rng=0)
    rng = np.random.default_rng(1)
    for _, m, k in model.named_parameters():  # move off the symmetric init (zero biases, unit gains)
        m.params[k] = m.params[k] + 0.1 * rng.standard_normal(m.params[k].shape)
    idx = rng.integers(0, 9, (3, 6))
    targets = rng.integers(0, 9, (3, 6))
    loss, dlogits = cross_entropy(model.forward(idx), targets)
    model.backward(dlogits)
    params = {n: t(m.params[k], True) for n, m, k in model.named_parameters()}
    logits = torch_lm(params, torch.tensor(idx), cfg)
    tloss = TF.cross_entropy(logits.reshape(-1, 9), torch.tensor(targets).reshape(-1))
    tloss.backward()
    assert abs(loss - tloss.item()) < 1e-12
    for name, module, key in model.named_parameters():
        np.testing.assert_allclose(module.grads[key], params[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
