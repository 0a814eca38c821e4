"""Tokenizers: GPT-2's byte-pair encoding (the default), a byte-level BPE trained on a corpus, or any
Hugging Face `tokenizer.json`, behind one small `Tokenizer` interface.

GPT-2's: `tiktoken.get_encoding("gpt2")` downloads its BPE files on first use. We ship the
same 50,256 merge ranks (from the MIT-licensed openai-whisper package, whose
`gpt2.tiktoken` is identical to GPT-2's vocab.bpe/encoder.json) and add
`<|endoftext|>` = 50256, so tokenizing never touches the network. The module-level `encode`,
`decode`, `EOT_ID`, `VOCAB_SIZE` and `fingerprint` are GPT-2's.

  gpt2()               GPT-2's tokenizer as a `Tokenizer` (kind "gpt2")
  train_bpe(texts, n)  a byte-level BPE of n tokens trained on texts (kind "bpe")
  from_file(path)      a tokenizer.json, or a folder holding one (kind "file")
  from_spec(spec)      the tokenizer a checkpoint stored (`Tokenizer.spec()`); None = gpt2 (older checkpoints)
  from_settings(node)  the tokenizer a `tokenizer` config group node names (None: a bpe still to be trained)
  pretrained_tokenizer(path)  the tokenizer of pretrained weights (GPT-2's, or an export's tokenizer.json)
  same_tokenizer(mine, theirs, n)  whether a run's tokenizer is the one weights were trained with
  tokenizer_of(model)  the tokenizer a loaded model reads (`model.tokenizer`, set by the loaders), else gpt2

Trained BPEs use Hugging Face `tokenizers` (Rust). Measured on this project's 2 shared cores
(AVX512-BF16 CPU, 2026-12-07): a 1,024-token BPE on 256 KB of English and Chinese text trains in 0.46 s
with it, 232 s with tiktoken's own trainer (`tiktoken._educational`, pure Python). It trains from a
stream of texts (it keeps the counts of pre-tokens, not the text) and writes the `tokenizer.json` that
transformers loads, so an export needs no conversion. rustbpe (nanochat's trainer, Rust too) is not
installed here nor a declared dependency, and its ranks would need converting for transformers;
sentencepiece (not installed either) splits text without GPT-2's pre-tokenizer, so the token cache's
cut-safe pieces would not hold for it. The trained BPE pre-tokenizes with GPT-2's regex and maps bytes
as GPT-2 does, so the token cache's piece cuts (gptlit.data.readers.safe_cut) stay exact for it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
import tiktoken

from gptlit.core.errors import UserError

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257

# GPT-2's pre-tokenizer regex (tiktoken's r50k pattern).
_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# end-of-text tokens of common tokenizer.json files, in the order they are looked for (kind "file")
EOT_CANDIDATES = (EOT_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>", "[SEP]")
MIN_BPE_VOCAB = 256 + 1  # every byte, and <|endoftext|>


def _load_ranks() -> dict[bytes, int]:
    text = resources.files("gptlit").joinpath("assets/gpt2.tiktoken").read_text("ascii")
    ranks = {}
    for line in text.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (vocabulary 50,257, `<|endoftext|>` = 50256)."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=_PAT_STR,
        mergeable_ranks=_load_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """SHA-256 of what decides the ids of a text: the ranks, the pre-tokenizer regex and the special tokens."""
    h = hashlib.sha256(resources.files("gptlit").joinpath("assets/gpt2.tiktoken").read_bytes())
    h.update(f"\0{_PAT_STR}\0{EOT_TOKEN}={EOT_ID}".encode())
    return h.hexdigest()


def encode(text: str) -> list[int]:
    """Token ids of `text`; a literal `<|endoftext|>` in the text becomes id 50256."""
    return get_tokenizer().encode(text, allowed_special={EOT_TOKEN})


def decode(ids) -> str:
    return get_tokenizer().decode(list(ids))


@functools.lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (the byte-level BPE's alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


# ---- the interface ------------------------------------------------------------------------------


class Tokenizer:
    """What gptlit needs of a tokenizer. kind: gpt2 | bpe | file; name: how logs and errors show it."""

    kind: str  # set by each subclass or instance
    name: str
    eot_token: str = EOT_TOKEN
    eot_id: int = EOT_ID
    vocab_size: int = VOCAB_SIZE  # ids are 0 .. vocab_size - 1

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """SHA-256 of what decides the ids of a text (the token cache's key includes it)."""
        raise NotImplementedError

    def hf_json(self) -> str:
        """This tokenizer as a Hugging Face tokenizer.json."""
        raise NotImplementedError

    def spec(self) -> dict:
        """What a checkpoint stores to rebuild it (from_spec): plain strings, loadable with weights_only."""
        return {"kind": self.kind, "name": self.name, "fingerprint": self.fingerprint, "json": self.hf_json()}

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each id's text (vocab_size entries); 0 for special tokens (not text)."""
        raise NotImplementedError

    def bytes_per_token(self, texts: Iterable[str]) -> float:
        """UTF-8 bytes per token of the texts (each encoded alone)."""
        nb = nt = 0
        for t in texts:
            nb += len(t.encode("utf-8", "surrogatepass"))
            nt += len(self.encode(t))
        return nb / max(nt, 1)

    def describe(self) -> str:
        return f"{self.name} {self.vocab_size:,}"

    def save(self, folder: str | Path) -> list[Path]:
        """tokenizer.json, tokenizer_config.json and special_tokens_map.json into folder (atomically each):
        what transformers' AutoTokenizer.from_pretrained(folder) loads offline."""
        from gptlit.core.files import atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        special = {"bos_token": self.eot_token, "eos_token": self.eot_token, "unk_token": self.eot_token}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False,
                  "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30, **special}
        files = {"tokenizer.json": self.hf_json(), "tokenizer_config.json": config, "special_tokens_map.json": special}
        out = []
        for name, content in files.items():
            atomic_write(folder / name, content if isinstance(content, str) else json.dumps(content, indent=2) + "\n")
            out.append(folder / name)
        return out


class GPT2Tokenizer(Tokenizer):
    """GPT-2's tokenizer (tiktoken, ranks shipped in gptlit/assets/)."""

    kind = name = "gpt2"

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def decode(self, ids) -> str:
        return decode(ids)

    @property
    def fingerprint(self) -> str:
        return fingerprint()

    def spec(self) -> dict:
        return {"kind": "gpt2", "name": "gpt2", "fingerprint": self.fingerprint}  # the ranks ship with gptlit

    def token_bytes(self) -> np.ndarray:
        return _gpt2_token_bytes().copy()

    def hf_json(self) -> str:
        return _gpt2_hf_json()


@functools.lru_cache(maxsize=1)
def _gpt2_token_bytes() -> np.ndarray:
    enc = get_tokenizer()
    out = np.zeros(VOCAB_SIZE, np.int64)
    for i in range(VOCAB_SIZE):
        if i != EOT_ID:
            out[i] = len(enc.decode_single_token_bytes(i))
    return out


@functools.lru_cache(maxsize=1)
def gpt2_vocab() -> dict[str, int]:
    """GPT-2's vocabulary as a tokenizer.json writes it (byte-level characters -> id), <|endoftext|> included."""
    alpha = byte_level_alphabet()
    return {**{"".join(alpha[x] for x in t): r for t, r in _load_ranks().items()}, EOT_TOKEN: EOT_ID}


def is_gpt2(tok: "Tokenizer") -> bool:
    """Whether a tokenizer has GPT-2's vocabulary (e.g. the tokenizer.json of a GPT-2 download or of an export)."""
    if tok.kind == "gpt2":
        return True
    inner = getattr(tok, "tok", None)
    return tok.vocab_size == VOCAB_SIZE and inner is not None and inner.get_vocab(with_added_tokens=True) == gpt2_vocab()


@functools.lru_cache(maxsize=1)
def _gpt2_hf_json() -> str:
    """GPT-2's tokenizer as a Hugging Face tokenizer.json, built from the shipped ranks: the vocabulary
    in GPT-2's byte-to-character map, and each token's merge recovered by running BPE on its bytes with
    the merges ranked below it (the last step leaves exactly two parts: the pair that merges into it)."""
    ranks = _load_ranks()
    alpha = byte_level_alphabet()

    def s(b: bytes) -> str:
        return "".join(alpha[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:  # BPE with the ranks below this token's
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
            if ranks.get(parts[best] + parts[best + 1], 1 << 62) >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:  # pragma: no cover - GPT-2's ranks are a BPE's
            raise RuntimeError(f"GPT-2 rank {rank} is no merge of two tokens")
        merges.append((s(parts[0]), s(parts[1])))
    vocab = {s(t): r for t, r in ranks.items()}
    return _byte_level_json(vocab, merges, {EOT_TOKEN: EOT_ID})


def _byte_level_json(vocab: dict[str, int], merges: list[tuple[str, str]], special: dict[str, int]) -> str:
    """A tokenizer.json of a byte-level BPE with GPT-2's pre-tokenizer regex."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models

    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()

    for t, i in sorted(special.items(), key=lambda kv: kv[1]):
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)])
        if tok.token_to_id(t) != i:  # pragma: no cover
            raise RuntimeError(f"special token {t} got id {tok.token_to_id(t)}, not {i}")
    return tok.to_str()


def _pre_tokenizer():
    """GPT-2's regex (as tiktoken writes it), then bytes to GPT-2's characters."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


class HFFileTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (a trained BPE, or a tokenizer.json from disk)."""

    def __init__(self, tok, kind: str, name: str, eot_token: str | None = None):
        self.tok, self.kind, self.name = tok, kind, name
        self._json = tok.to_str()
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        found = [eot_token] if eot_token else [t for t in EOT_CANDIDATES if t in vocab]
        if not found or found[0] not in vocab:
            raise UserError(
                f"the tokenizer {name} has no end-of-text token (looked for {', '.join(EOT_CANDIDATES)}); "
                f"gptlit joins documents with one: use a tokenizer.json that has one"
            )
        self.eot_token, self.eot_id = found[0], vocab[found[0]]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        # the whole tokenizer.json, which holds everything that decides the ids; canonical key order
        canon = json.dumps(json.loads(self._json), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def hf_json(self) -> str:
        return self._json

    def describe(self) -> str:
        return f"{self.name} {self.vocab_size:,}" if self.kind == "bpe" else f"{self.name} ({self.vocab_size:,} tokens)"

    def token_bytes(self) -> np.ndarray:
        inverse = {c: b for b, c in byte_level_alphabet().items()}
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        out = np.zeros(self.vocab_size, np.int64)
        for piece, i in self.tok.get_vocab(with_added_tokens=True).items():
            if piece in special:
                continue
            if all(c in inverse for c in piece) and self._byte_level:
                out[i] = len(piece)  # one character per byte
            else:
                out[i] = len(self.tok.decode([i]).encode("utf-8", "surrogatepass"))
        return out

    @functools.cached_property
    def _byte_level(self) -> bool:
        return '"ByteLevel"' in json.dumps(json.loads(self._json).get("decoder"))


# ---- making one ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


def check_bpe_vocab(vocab_size) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB:
        raise UserError(
            f"tokenizer.vocab_size={vocab_size} is too small: a byte-level BPE needs {MIN_BPE_VOCAB} tokens for the "
            f"256 bytes and {EOT_TOKEN}; use tokenizer.vocab_size={MIN_BPE_VOCAB} or more (8192-32768 for a real corpus)"
        )
    if vocab_size > 1 << 20:
        raise UserError(f"tokenizer.vocab_size={vocab_size} is too large: use at most {1 << 20:,} (GPT-2 has 50,257)")
    return vocab_size


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None) -> HFFileTokenizer:
    """A byte-level BPE of at most vocab_size tokens (fewer when the text has no more pairs to merge) trained
    on texts: ids 0..255 the bytes in GPT-2's order, then the merges, then <|endoftext|> last, as in GPT-2."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, trainers

    check_bpe_vocab(vocab_size)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    alphabet = [byte_level_alphabet()[b] for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=alphabet, show_progress=False,
                                  min_frequency=2, special_tokens=[], limit_alphabet=256)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    # the 256 bytes first, in byte order (the trainer orders its alphabet by character): rebuilt with that vocabulary
    data = json.loads(tok.to_str())
    learned = data["model"]["vocab"]
    order = alphabet + sorted((t for t in learned if t not in set(alphabet)), key=learned.get)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    vocab = {t: i for i, t in enumerate(order)}
    text = _byte_level_json(vocab, merges, {EOT_TOKEN: len(vocab)})
    return HFFileTokenizer(HFTokenizer.from_str(text), "bpe", "bpe", EOT_TOKEN)


def from_json(text: str, kind: str, name: str) -> HFFileTokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    return HFFileTokenizer(HFTokenizer.from_str(text), kind, name)


def from_file(path: str | os.PathLike, key: str = "tokenizer.path") -> HFFileTokenizer:
    """A tokenizer.json (or a folder holding one, such as a downloaded model's); one line when it is not one."""
    from gptlit.core.files import user_path

    p = user_path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not p.exists():
        raise UserError(f"{key}={path}: no such file or folder ({p}); give a tokenizer.json or a model folder holding one")
    if not f.is_file():
        raise UserError(f"{key}={path}: the folder {p} has no tokenizer.json; give a tokenizer.json or a folder holding one")
    try:
        text = f.read_text(encoding="utf-8")
        return from_json(text, "file", str(f))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions for a bad file
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"{key}={path}: {f} is not a Hugging Face tokenizer.json ({first[:200]}); "
                        f"give the tokenizer.json of a model (e.g. from its Hugging Face folder)") from None


def from_spec(spec: dict | None, where: str = "the checkpoint") -> Tokenizer:
    """The tokenizer a checkpoint stored (Tokenizer.spec); None (a checkpoint older than the tokenizer group) is gpt2."""
    if not spec or spec.get("kind") == "gpt2":
        return gpt2()
    try:
        tok = from_json(spec["json"], spec["kind"], spec.get("name") or spec["kind"])
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{where}: its stored tokenizer ({spec.get('name', '?')}) is unreadable ({str(e)[:120]}); "
                        f"the checkpoint is damaged: use another checkpoint of the run") from None
    if spec.get("fingerprint") and spec["fingerprint"] != tok.fingerprint:
        raise UserError(f"{where}: its stored tokenizer ({spec.get('name')}) does not match its fingerprint; "
                        f"the checkpoint is damaged: use another checkpoint of the run")
    return tok


def from_settings(settings: dict) -> Tokenizer | None:
    """The tokenizer of a `tokenizer` config group node that needs no corpus (gpt2, file); None for bpe."""
    kind = settings.get("kind", "gpt2")
    if kind == "gpt2":
        return gpt2()
    if kind == "bpe":
        check_bpe_vocab(settings.get("vocab_size"))
        return None
    if kind == "file":
        if not settings.get("path"):
            raise UserError("tokenizer=file needs tokenizer.path=<a tokenizer.json or a model folder holding one>")
        return from_file(settings["path"])
    raise UserError(f"tokenizer.kind={kind} is unknown: use tokenizer=gpt2, tokenizer=bpe or tokenizer=file")


def pretrained_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of pretrained weights (model.init_from, sample.py init_from=): a folder's tokenizer.json
    unless it is GPT-2's (or absent: GPT-2's, which gptlit ships)."""
    p = Path(path)
    if not (p.is_dir() and (p / "tokenizer.json").is_file()):
        return gpt2()
    tok = from_file(p, key="model.init_from")
    return gpt2() if is_gpt2(tok) else tok


def same_tokenizer(mine: Tokenizer | dict, theirs: Tokenizer, vocab_size: int) -> bool:
    """Whether a run's tokenizer (a Tokenizer, or the settings of a bpe still to be trained, see from_settings)
    is `theirs`, the tokenizer of weights with vocab_size ids: the same ids for every text (fingerprint); a
    bpe to train is the same as a trained bpe of the same vocabulary size."""
    if isinstance(mine, dict):
        return theirs.kind == "bpe" and mine.get("vocab_size") == vocab_size
    return mine.fingerprint == theirs.fingerprint


def tokenizer_of(model) -> Tokenizer:
    """The tokenizer whose ids `model` reads: the one its loader attached (model.tokenizer), else GPT-2's."""
    return getattr(model, "tokenizer", None) or gpt2()
