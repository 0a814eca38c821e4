import pytest

from gptlit.model.tokenizer import EOT_ID, EOT_TOKEN, VOCAB_SIZE, decode, encode, get_tokenizer


def test_vocabulary_and_special_token():
    enc = get_tokenizer()
    assert enc.n_vocab == VOCAB_SIZE == 50257
    assert enc.eot_token == EOT_ID == 50256
    assert encode(EOT_TOKEN) == [50256]


def test_book_example():
    assert encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert decode([6109, 3626, 6100, 345]) == "Every effort moves you"


def test_known_gpt2_ids():
    # ids from GPT-2's encoder.json, checked against the book's chapter 2 output
    assert encode("Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.") == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 286, 617, 34680,
        27271, 13,
    ]


@pytest.mark.parametrize(
    "text",
    ["", " leading space", "tabs\tand\nnewlines\n\n", "Ünïcödé — ✓ 漢字 🙂", "x" * 1000, "  multiple   spaces  "],
)
def test_round_trip(text):
    assert decode(encode(text)) == text


def test_offline(monkeypatch):
    # building the encoding must not touch the network
    import socket

    def no_network(*a, **k):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "create_connection", no_network)
    get_tokenizer.cache_clear()
    assert get_tokenizer().encode("offline") == encode("offline")


def test_ranks_are_complete():
    from gptlit.model.tokenizer import _load_ranks

    ranks = _load_ranks()
    assert sorted(ranks.values()) == list(range(50256))  # ids 0..50255, then <|endoftext|>
    assert len(set(ranks)) == 50256
