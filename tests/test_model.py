import math

import pytest
import torch

from gptlit import GPT, GPTConfig
from gptlit.core.errors import UserError


def test_small_is_gpt2_124m():
    model = GPT(GPTConfig.from_name("small"))
    assert model.num_params() == 124_439_808  # GPT-2 small with tied embeddings


def test_param_count_formula():
    # count by hand: embeddings + per-block weights + final norm (+ untied head)
    for tie in (True, False):
        c = GPTConfig.from_name("nano", tie_embeddings=tie)
        C, V, T, n = c.emb_dim, c.vocab_size, c.context_length, c.n_layers
        block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 4 * C
        expected = V * C + T * C + n * block + 2 * C + (0 if tie else V * C)
        assert GPT(c).num_params() == expected


def test_initial_loss_near_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("nano")).eval()
    x = torch.randint(0, 50257, (4, 64))
    y = torch.randint(0, 50257, (4, 64))
    loss = model(x, y).item()
    assert abs(loss - math.log(50257)) < 0.3


def test_logits_shape_and_padding_never_predicted():
    cfg = GPTConfig.from_name("nano")
    assert cfg.padded_vocab_size == 50304
    model = GPT(cfg).eval()
    x = torch.randint(0, 50257, (2, 10))
    assert model(x).shape == (2, 10, 50257)
    # loss on padded logits equals loss on the real vocabulary alone
    y = torch.randint(0, 50257, (2, 10))
    ref = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert torch.allclose(model(x, y), ref, atol=1e-5)


def test_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("nano")).eval()
    x = torch.randint(0, 50257, (1, 12))
    x2 = x.clone()
    x2[0, 8:] = torch.randint(0, 50257, (4,))
    # changing future tokens leaves earlier logits untouched
    assert torch.allclose(model(x)[0, :8], model(x2)[0, :8], atol=1e-5)
    assert not torch.allclose(model(x)[0, 8:], model(x2)[0, 8:], atol=1e-3)


def test_tied_and_untied_head():
    tied = GPT(GPTConfig.from_name("nano"))
    assert tied.head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    untied = GPT(GPTConfig.from_name("nano", tie_embeddings=False))
    assert untied.head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()


def test_qkv_bias_option():
    assert GPT(GPTConfig.from_name("nano", qkv_bias=False)).blocks[0].attn.qkv.bias is None
    assert GPT(GPTConfig.from_name("nano", qkv_bias=True)).blocks[0].attn.qkv.bias is not None


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("nano", drop_rate=0.5))
    x = torch.randint(0, 50257, (2, 16))
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_too_long_sequence():
    model = GPT(GPTConfig.from_name("nano"))
    with pytest.raises(ValueError, match="context_length=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(emb_dim=66, n_heads=4), r"model.emb_dim=66 is not divisible by model.n_heads=4"),
        (dict(n_layers=0), r"model.n_layers=0"),
        (dict(drop_rate=1.5), r"model.drop_rate=1.5"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(UserError, match=match):
        GPTConfig.from_name("nano", **overrides)


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown model 'huge'.*nano"):
        GPTConfig.from_name("huge")


def test_last_only_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("nano")).eval()
    x = torch.randint(0, 50257, (2, 9))
    last = model(x, last_only=True)
    assert last.shape == (2, 1, 50257)
    assert torch.allclose(last, model(x)[:, -1:], atol=1e-5)


def test_init_schemes():
    torch.manual_seed(0)
    gpt2 = GPT(GPTConfig.from_name("nano"))
    book = GPT(GPTConfig.from_name("nano", init="torch", tie_embeddings=False))
    assert abs(gpt2.tok_emb.weight[:50257].std().item() - 0.02) < 0.002
    assert abs(book.tok_emb.weight[:50257].std().item() - 1.0) < 0.05  # PyTorch's N(0, 1), as the book
    with pytest.raises(UserError, match="model.init=xavier is unknown"):
        GPTConfig.from_name("nano", init="xavier")


@pytest.mark.parametrize("tie, pad, scale", [(True, 64, 1.0), (False, 64, 0.5), (False, 1, 1.0)])
def test_fused_head_loss_matches_plain_loss_and_gradients(tie, pad, scale):
    from gptlit.model.gpt import FusedHeadLoss

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("nano", tie_embeddings=tie, pad_vocab_multiple=pad, drop_rate=0.0))
    x = torch.randint(0, 50257, (3, 17))
    y = torch.randint(0, 50257, (3, 17))
    y[0, 0] = 50256  # the last real id, next to the padding
    called = []
    orig = FusedHeadLoss.apply
    FusedHeadLoss.apply = lambda *a: called.append(1) or orig(*a)
    try:
        results = []
        for fused in (True, False):
            model.fused_loss = fused
            model.zero_grad(set_to_none=True)
            loss = model(x, y)
            (loss * scale).backward()
            results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    finally:
        FusedHeadLoss.apply = orig
    assert called == [1]  # the fused path ran once, the plain path did not use it
    (lf, gf), (lp, gp) = results
    assert torch.allclose(lf, lp, atol=1e-5), (lf, lp)
    for n in gp:
        assert torch.allclose(gf[n], gp[n], atol=1e-6, rtol=1e-4), n
    head = gf["tok_emb.weight" if tie else "head.weight"]
    assert head.shape[0] == (50304 if pad == 64 else 50257)
    assert head[50257:].abs().sum() == 0  # padding rows get no gradient
    with torch.no_grad():  # evaluation takes the plain path and gives the same loss
        model.fused_loss = True
        assert torch.allclose(model(x, y), lp, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": False, "qkv_bias": False}, {"pad_vocab_multiple": 1}])
def test_tensor_shapes_and_param_count_come_from_the_model(overrides):
    from gptlit.model.gpt import num_params, tensor_shapes

    cfg = GPTConfig.from_name("nano", **overrides)
    model = GPT(cfg)
    assert tensor_shapes(cfg) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert num_params(cfg) == sum(p.numel() for p in model.parameters())


def test_every_model_field_has_a_kind():
    import dataclasses

    from gptlit.model.config import KINDS

    names = [f.name for f in dataclasses.fields(GPTConfig)]
    assert sorted(n for k in KINDS for n in GPTConfig.fields_of(k)) == sorted(names)
    assert "activation_checkpointing" in GPTConfig.fields_of("runtime")
    assert {"vocab_size", "emb_dim", "n_layers", "context_length"} <= set(GPTConfig.fields_of("arch"))
