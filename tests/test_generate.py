"""Decoding (gptlit.model.generate): the book's numbers, sampling statistics, eos, seeds and the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from gptlit import GPT, GPTConfig
from gptlit.core.errors import UserError
from gptlit.model.generate import (
    SamplingConfig,
    generate,
    generate_stream,
    generate_text,
    next_token_probs,
    pick,
    top_k_filter,
    top_p_filter,
)
from gptlit.model.tokenizer import EOT_ID, encode

# Next-token logits of the book's example (chapter 5, "forward" as the next word).
BOOK_LOGITS = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def nano(context_length: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name("nano", context_length=context_length)).eval()


# --- the book's numbers ------------------------------------------------------------------------


def test_top_k_keeps_three_largest_logits_as_in_the_book():
    logits = torch.tensor(BOOK_LOGITS)
    kept = top_k_filter(logits, 3)
    assert torch.isinf(kept).tolist() == [False, True, True, False, True, True, True, False, True]
    assert kept[[0, 3, 7]].tolist() == pytest.approx([4.51, 6.75, 6.28])
    probs = next_token_probs(logits, SamplingConfig(temperature=1.0, top_k=3))
    assert probs[[0, 3, 7]].tolist() == pytest.approx([0.0615, 0.5775, 0.3610], abs=1e-4)
    assert probs.sum().item() == pytest.approx(1.0)
    assert (probs[[1, 2, 4, 5, 6, 8]] == 0).all()


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
def test_temperature_scales_logits_before_softmax(temperature):
    expected = softmax([x / temperature for x in BOOK_LOGITS])
    probs = next_token_probs(torch.tensor(BOOK_LOGITS), SamplingConfig(temperature=temperature))
    assert probs.tolist() == pytest.approx(expected, abs=1e-6)


def entropy(ps) -> float:
    return -sum(p * math.log(p) for p in ps if p > 0)


def test_low_temperature_sharpens_and_high_temperature_flattens():
    probs = {t: next_token_probs(torch.tensor(BOOK_LOGITS), SamplingConfig(temperature=t)).tolist() for t in (0.1, 1.0, 5.0)}
    assert probs[0.1][3] > 0.98  # "forward" almost always
    assert max(probs[5.0]) < 0.3
    assert entropy(probs[0.1]) < entropy(probs[1.0]) < entropy(probs[5.0])


def test_tiny_temperature_is_argmax_not_nan():
    probs = next_token_probs(torch.tensor(BOOK_LOGITS), SamplingConfig(temperature=1e-30))
    assert probs.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]


# --- top-p -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p, kept",
    [
        (0.05, {2}),  # the most likely token always stays
        (0.39, {2}),
        (0.41, {2, 0}),  # 0.4 < 0.41 -> add the next one: 0.7
        (0.69, {2, 0}),
        (0.71, {2, 0, 3}),  # 0.9
        (0.95, {2, 0, 3, 1}),
        (1.0, {2, 0, 3, 1}),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(p, kept):
    probs = [0.3, 0.1, 0.4, 0.2]  # sorted: 0.4 (id 2), 0.3 (id 0), 0.2 (id 3), 0.1 (id 1)
    logits = torch.tensor([math.log(x) for x in probs])
    out = top_p_filter(logits, p)
    assert {i for i in range(4) if out[i] > float("-inf")} == kept
    assert out[sorted(kept)].tolist() == pytest.approx(logits[sorted(kept)].tolist())  # kept logits untouched
    dist = next_token_probs(logits, SamplingConfig(top_p=p))
    mass = sum(probs[i] for i in kept)
    assert dist.tolist() == pytest.approx([probs[i] / mass if i in kept else 0.0 for i in range(4)], abs=1e-6)


def test_top_p_works_per_row():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.05, 0.85]]))
    out = top_p_filter(logits, 0.75)  # row 0 needs 0.6 + 0.3; row 1's 0.85 is enough alone
    assert torch.isfinite(out).tolist() == [[True, True, False], [False, False, True]]


def test_top_p_applies_after_temperature():
    # at T=1 the top token alone (0.7) reaches p=0.6; T=5 flattens it below 0.6, so the nucleus needs two
    probs = [0.7, 0.2, 0.1]
    logits = torch.tensor([math.log(x) for x in probs])
    assert (next_token_probs(logits, SamplingConfig(top_p=0.6)) > 0).tolist() == [True, False, False]
    flat = softmax([math.log(x) / 5 for x in probs])
    assert flat[0] < 0.6  # so the nucleus at T=5 needs a second token
    got = next_token_probs(logits, SamplingConfig(top_p=0.6, temperature=5.0))
    assert got.tolist() == pytest.approx([flat[0] / (flat[0] + flat[1]), flat[1] / (flat[0] + flat[1]), 0.0], abs=1e-6)


# --- sampling statistics -----------------------------------------------------------------------


def draw(logits: list[float], cfg: SamplingConfig, n: int = 10_000, seed: int = 0) -> list[int]:
    """Counts of each id over n draws by pick()."""
    gen = torch.Generator().manual_seed(seed)
    ids = pick(torch.tensor([logits]).expand(n, -1), cfg, gen).flatten()
    return torch.bincount(ids, minlength=len(logits)).tolist()


def assert_matches(counts: list[int], expected: list[float]):
    """Chi-square goodness of fit over the ids with expected probability > 0; the rest never drawn."""
    stats = pytest.importorskip("scipy.stats")
    n = sum(counts)
    support = [i for i, p in enumerate(expected) if p > 0]
    assert all(counts[i] == 0 for i in range(len(expected)) if i not in support)
    if len(support) > 1:
        res = stats.chisquare([counts[i] for i in support], [n * expected[i] for i in support])
        assert res.pvalue > 1e-3, (counts, expected)
    # and a wrong distribution is rejected: the test has power
    flat = [1 / len(support)] * len(support)
    if max(abs(expected[i] - 1 / len(support)) for i in support) > 0.05:
        assert stats.chisquare([counts[i] for i in support], [n * f for f in flat]).pvalue < 1e-3


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_with_temperature_matches_softmax(temperature):
    counts = draw(BOOK_LOGITS, SamplingConfig(temperature=temperature))
    assert_matches(counts, softmax([x / temperature for x in BOOK_LOGITS]))


def test_top_k_sampling_never_draws_outside_top_k():
    counts = draw(BOOK_LOGITS, SamplingConfig(top_k=3))
    top3 = softmax([BOOK_LOGITS[i] for i in (0, 3, 7)])
    assert_matches(counts, [top3[(0, 3, 7).index(i)] if i in (0, 3, 7) else 0.0 for i in range(9)])


def test_top_p_sampling_draws_the_nucleus_in_proportion():
    probs = [0.05, 0.35, 0.1, 0.25, 0.2, 0.05]  # nucleus for p=0.75: 0.35 + 0.25 + 0.2 = 0.8
    counts = draw([math.log(p) for p in probs], SamplingConfig(top_p=0.75))
    assert_matches(counts, [p / 0.8 if p in (0.35, 0.25, 0.2) else 0.0 for p in probs])


# --- greedy, seeds -----------------------------------------------------------------------------


def test_temperature_zero_equals_top_k_one():
    model = nano()
    idx = torch.tensor([encode("Every effort moves you")])
    greedy = generate(model, idx, SamplingConfig(temperature=0.0, max_new_tokens=20, eos_id=None))
    top1 = generate(model, idx, SamplingConfig(temperature=1.0, top_k=1, max_new_tokens=20, eos_id=None),
                    generator=torch.Generator().manual_seed(7))
    assert greedy.shape == (1, idx.size(1) + 20)
    assert torch.equal(greedy, top1)
    logits = model(idx)[0, -1]
    assert greedy[0, idx.size(1)].item() == int(logits.argmax())  # the first new token is the argmax


def test_fixed_seed_repeats_and_other_seeds_differ():
    model = nano()
    cfg = SamplingConfig(temperature=1.0, top_k=50, max_new_tokens=20, eos_id=None)
    a = generate_text(model, "Every effort moves you", cfg, seed=123)
    b = generate_text(model, "Every effort moves you", cfg, seed=123)
    c = generate_text(model, "Every effort moves you", cfg, seed=124)
    assert a == b and a != c
    assert len(encode(a)) >= 15  # about 20 tokens (a re-encoding may merge a few)


def test_generate_text_leaves_global_rng_and_train_mode_alone():
    model = nano().train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    generate_text(model, "Hi", SamplingConfig(max_new_tokens=5), seed=1)
    assert torch.equal(torch.rand(3), expected)
    assert model.training


# --- eos, max_new_tokens, batches ----------------------------------------------------------------


class Scripted(torch.nn.Module):
    """A stand-in model: the next token after a row's last token t is script[t] (vocab of 50257)."""

    def __init__(self, script: dict[int, int], context_length: int = 64):
        super().__init__()
        self.script = script
        self.cfg = GPTConfig(vocab_size=50257, context_length=context_length)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def forward(self, idx, targets=None, cache=None, last_only=False):
        self.seen.append(idx[0].tolist())
        logits = torch.zeros(idx.size(0), idx.size(1), self.cfg.vocab_size)
        for b in range(idx.size(0)):
            logits[b, -1, self.script.get(int(idx[b, -1]), 0)] = 100.0
        return logits


def test_rows_stop_at_eos_and_pad_with_it():
    model = Scripted({1: 2, 2: 3, 3: 4, 4: 9, 7: 9})  # 9 plays eos
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=10, eos_id=9)
    out = generate(model, torch.tensor([[5, 1], [6, 7]]), cfg, use_cache=False)
    # row 0: 2 3 4 eos; row 1: eos at once, then eos until row 0 ends too
    assert out.tolist() == [[5, 1, 2, 3, 4, 9], [6, 7, 9, 9, 9, 9]]


def test_max_new_tokens_and_no_eos():
    model = Scripted({i: i + 1 for i in range(100)})
    out = generate(model, torch.tensor([[1], [50]]), SamplingConfig(temperature=0.0, max_new_tokens=4, eos_id=None), use_cache=False)
    assert out.tolist() == [[1, 2, 3, 4, 5], [50, 51, 52, 53, 54]]
    out = generate(model, torch.tensor([[1]]), SamplingConfig(temperature=0.0, max_new_tokens=0), use_cache=False)
    assert out.tolist() == [[1]]


def test_default_eos_is_endoftext_and_text_stops_there():
    words = encode(" the cat sat")
    script = {EOT_ID: words[0], words[0]: words[1], words[1]: words[2], words[2]: EOT_ID}
    pieces: list[str] = []
    text = generate_text(Scripted(script), "", SamplingConfig(temperature=0.0, max_new_tokens=50),
                         use_cache=False, on_text=pieces.append)
    assert text == " the cat sat"
    assert "".join(pieces) == text


def test_generate_text_warns_on_empty_and_long_prompts():
    model = Scripted({}, context_length=8)
    warnings: list[str] = []
    generate_text(model, "", SamplingConfig(max_new_tokens=1, eos_id=None), use_cache=False, warn=warnings.append)
    assert model.seen[-1] == [EOT_ID]
    prompt = " a" * 20
    generate_text(model, prompt, SamplingConfig(max_new_tokens=1, eos_id=None), use_cache=False, warn=warnings.append)
    assert model.seen[-1] == encode(prompt)[-8:]
    assert "empty prompt" in warnings[0] and "<|endoftext|>" in warnings[0]
    assert "20 tokens" in warnings[1] and "last 8" in warnings[1]


def test_batch_of_prompts_matches_single_rows_greedy():
    model = nano()
    idx = torch.tensor([encode("Every effort moves"), encode("The cat sat on")[:3]])
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=12, eos_id=None)
    both = generate(model, idx, cfg)
    for b in range(2):
        assert torch.equal(both[b : b + 1], generate(model, idx[b : b + 1], cfg))


# --- KV cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    SamplingConfig(temperature=0.0, max_new_tokens=40, eos_id=None),
    SamplingConfig(temperature=1.0, top_k=50, max_new_tokens=40, eos_id=None),
    SamplingConfig(temperature=0.8, top_p=0.9, max_new_tokens=40, eos_id=None),
], ids=["greedy", "top_k", "top_p"])
def test_cache_gives_identical_tokens_also_past_the_context(cfg):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("nano", context_length=16, vocab_size=1000)).eval()  # small vocab: fast
    idx = torch.randint(0, 1000, (2, 5))
    assert idx.size(1) + cfg.max_new_tokens > 2 * 16  # the window slides many times
    outs = [generate(model, idx, cfg, torch.Generator().manual_seed(3), use_cache=c) for c in (True, False)]
    assert outs[0].shape == (2, idx.size(1) + 40)
    assert torch.equal(outs[0], outs[1])


def test_cached_logits_match_full_forward():
    model = nano(context_length=16)
    torch.manual_seed(1)
    seq = torch.randint(0, 50257, (2, 16))
    cache = model.new_cache(2)
    with torch.no_grad():
        steps = [model(seq[:, :5], cache=cache)]  # prefill 5 tokens
        steps.append(model(seq[:, 5:8], cache=cache))  # a 3-token chunk on top of the cache
        steps += [model(seq[:, t : t + 1], cache=cache) for t in range(8, 16)]  # then one at a time
        full = model(seq)
    cached = torch.cat(steps, dim=1)
    assert cached.shape == full.shape == (2, 16, 50257)
    assert (cached - full).abs().max().item() < 1e-5
    assert (full[:, 1:] - full[:, :-1]).abs().max().item() > 1e-2  # positions differ: the check has teeth
    with pytest.raises(ValueError, match="context_length=16"):
        model(seq[:, :1], cache=cache)  # the cache is full


def test_stream_yields_one_token_per_step():
    model = nano()
    steps = list(generate_stream(model, torch.tensor([[1, 2, 3]]), SamplingConfig(temperature=0.0, max_new_tokens=5, eos_id=None)))
    assert len(steps) == 5 and all(s.shape == (1, 1) for s in steps)


# --- config errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(temperature=-0.5), "temperature=-0.5"),
        (dict(temperature="hot"), "temperature=hot"),
        (dict(top_k=0), "top_k=0"),
        (dict(top_k=-3), "top_k=-3"),
        (dict(top_k=2.5), "top_k=2.5"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(top_p=-0.1), "top_p=-0.1"),
        (dict(max_new_tokens=-1), "max_new_tokens=-1"),
    ],
)
def test_bad_sampling_values_raise_config_error(kwargs, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        SamplingConfig(**kwargs).validate()
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        SamplingConfig.from_dict({"prompt": "ignored", "every_n_steps": 5, **kwargs})


def test_good_sampling_values_pass():
    for kw in (dict(temperature=0), dict(top_k=1), dict(top_p=1.0), dict(top_p=1e-9), dict(top_k=None, top_p=None)):
        SamplingConfig(**kw).validate()
