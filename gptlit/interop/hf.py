"""Format conversion for GPT-2 weights: Hugging Face folders and the book's .pth state dicts in,
a Hugging Face folder out (write_hf_folder). Which model config a run takes from such files is
gptlit.run.model_source's job (model_for_run); this module reads and writes the formats and says
which GPTConfig values GPT-2 can express (HF_FIELDS).

Two layouts are read:
  * a Hugging Face GPT-2 folder: config.json + model.safetensors (or pytorch_model.bin, read
    with torch.load(weights_only=True) only). HF's Conv1D stores weights as (in, out).
  * a state dict of the GPTModel from "Build a Large Language Model From Scratch"
    (e.g. gpt2-small-124M.pth): separate W_query/W_key/W_value, norm scale/shift.
Both become gptlit's layout: a dict of tensors named like GPT.state_dict(), vocabulary rows
unpadded, pos_emb as long as the weights have it. `load_weights` pads and slices into a GPT.

transformers is not needed here: the files are read with safetensors and torch only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path

import torch

from gptlit.model.config import GPTConfig
from gptlit.core.errors import UserError
from gptlit.core.files import atomic_file, atomic_write
from gptlit.model.gpt import GPT, tensor_shapes
from gptlit.model.tokenizer import pretrained_tokenizer, tokenizer_of

GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}  # emb_dim -> n_heads in OpenAI's four sizes
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh GELU gptlit uses
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")


# How each GPTConfig field reaches a Hugging Face GPT-2 config.json. GPT-2 is one architecture, so every
# field of GPTConfig is one of:
#   HFKeys(...)        written to (and read from) these config.json keys
#   GPT2Only(value)    GPT-2 has no key for it and computes as if it had this value: export refuses
#                      any other value instead of writing a model that computes something else
#   NotExported(why)   not part of the exported model (how it was trained or how a step runs), or
#                      expressed by the weights themselves
# A new GPTConfig field missing here makes export refuse every model (and tests/test_hf.py fail),
# so a field cannot be added without saying what GPT-2 makes of it.
@dataclasses.dataclass(frozen=True)
class HFKeys:
    keys: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GPT2Only:
    value: object


@dataclasses.dataclass(frozen=True)
class NotExported:
    why: str


HF_FIELDS: dict[str, HFKeys | GPT2Only | NotExported] = {
    "vocab_size": HFKeys(("vocab_size",)),
    "context_length": HFKeys(("n_positions", "n_ctx")),
    "emb_dim": HFKeys(("n_embd",)),
    "n_heads": HFKeys(("n_head",)),
    "n_layers": HFKeys(("n_layer",)),
    "drop_rate": HFKeys(("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    "tie_embeddings": HFKeys(("tie_word_embeddings",)),
    "qkv_bias": NotExported("GPT-2 always has the bias; a model without one is written with zero biases, which computes the same"),
    "pad_vocab_multiple": NotExported("padding rows are left out of the exported weights"),
    "init": NotExported("how the weights started; the exported weights are what training made of them"),
    "activation_checkpointing": NotExported("how a training step runs"),
}


def check_gpt2_expressible(cfg: GPTConfig) -> None:
    """Raise UserError naming the first field of `cfg` that a GPT-2 config.json cannot express."""
    for f in dataclasses.fields(cfg):
        rule, value = HF_FIELDS.get(f.name), getattr(cfg, f.name)
        if rule is None:
            raise UserError(
                f"model.{f.name}={_fmt(value)} has no Hugging Face GPT-2 equivalent that gptlit knows of, so the model "
                f"cannot be exported as GPT-2; classify the field in gptlit/interop/hf.py HF_FIELDS"
            )
        if isinstance(rule, GPT2Only) and value != rule.value:
            raise UserError(
                f"model.{f.name}={_fmt(value)} cannot be expressed as Hugging Face GPT-2, which always computes "
                f"model.{f.name}={_fmt(rule.value)}; only a model trained with model.{f.name}={_fmt(rule.value)} exports"
            )


def _fmt(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)

# Per block: gptlit name, Hugging Face name, stored transposed (HF Conv1D is (in, out)).
HF_BLOCK = [
    ("ln1.weight", "ln_1.weight", False),
    ("ln1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True),
    ("attn.proj.bias", "attn.c_proj.bias", False),
    ("ln2.weight", "ln_2.weight", False),
    ("ln2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]
# Per block: gptlit name, the book's names (several are concatenated along dim 0).
BOOK_BLOCK = [
    ("ln1.weight", ["norm1.scale"]),
    ("ln1.bias", ["norm1.shift"]),
    ("attn.qkv.weight", ["att.W_query.weight", "att.W_key.weight", "att.W_value.weight"]),
    ("attn.qkv.bias", ["att.W_query.bias", "att.W_key.bias", "att.W_value.bias"]),
    ("attn.proj.weight", ["att.out_proj.weight"]),
    ("attn.proj.bias", ["att.out_proj.bias"]),
    ("ln2.weight", ["norm2.scale"]),
    ("ln2.bias", ["norm2.shift"]),
    ("mlp.fc.weight", ["ff.layers.0.weight"]),
    ("mlp.fc.bias", ["ff.layers.0.bias"]),
    ("mlp.proj.weight", ["ff.layers.2.weight"]),
    ("mlp.proj.bias", ["ff.layers.2.bias"]),
]
# Buffers that the files may carry but that hold no weights (causal masks).
IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|trf_blocks\.\d+\.att\.mask)$")

Plan = list[tuple[str, list[str], bool]]  # (gptlit name, source names, transposed)


# loading --------------------------------------------------------------------------------------
def load_pretrained(
    path: str | Path, n_heads: int | None = None, context_length: int | None = None, drop_rate: float = 0.0
) -> GPT:
    """A GPT holding the weights at `path` (Hugging Face GPT-2 folder or the book's .pth), in eval mode.

    n_heads: needed only for a .pth whose emb_dim is not one of GPT-2's sizes.
    context_length: use fewer positions than the weights have (pos_emb is sliced).
    model.tokenizer: the folder's tokenizer.json when it is not GPT-2's (an export of a tokenizer=bpe run).
    """
    cfg, state = read_pretrained(path, n_heads=n_heads)
    if context_length is not None:
        if not 0 < context_length <= cfg.context_length:
            raise UserError(f"context_length={context_length} must be in 1..{cfg.context_length} (the positions in {path})")
        cfg = dataclasses.replace(cfg, context_length=context_length)
    model = GPT(dataclasses.replace(cfg, drop_rate=drop_rate))
    load_weights(model, state)
    model.tokenizer = pretrained_tokenizer(path)
    return model.eval()


def read_pretrained(path: str | Path, n_heads: int | None = None) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(config, gptlit-named fp32 tensors) from a Hugging Face GPT-2 folder or a book .pth file/folder."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return _read_hf(p)
        pths = sorted(p.glob("*.pth"))
        if len(pths) == 1:
            return _read_book(pths[0], n_heads)
        if pths:
            names = ", ".join(f.name for f in pths)
            raise UserError(f"{p} holds several .pth files ({names}); give the one to load")
        raise UserError(
            f"{p} has no config.json (Hugging Face GPT-2 folder) nor a .pth state dict; "
            f"see docs/pretrained.md for how to download GPT-2"
        )
    if p.is_file():
        return _read_book(p, n_heads)
    raise UserError(
        f"{p}: no such file or folder; give a Hugging Face GPT-2 folder (config.json + model.safetensors) "
        f"or a .pth state dict from the book"
    )


def load_weights(model: GPT, state: dict[str, torch.Tensor]) -> GPT:
    """Copy gptlit-named weights into `model`: pad the vocabulary rows, slice pos_emb to the context."""
    cfg, own = model.cfg, model.state_dict()
    fitted = {}
    for name, t in state.items():
        if name in ("tok_emb.weight", "head.weight") and t.size(0) < cfg.padded_vocab_size:
            t = torch.cat([t, t.new_zeros(cfg.padded_vocab_size - t.size(0), t.size(1))])  # padding rows are zero
        elif name == "pos_emb.weight":
            t = t[: cfg.context_length]
        if name not in own or own[name].shape != t.shape:
            want = tuple(own[name].shape) if name in own else "no such tensor"
            raise UserError(f"weights do not fit the model: {name} has shape {tuple(t.shape)}, the model needs {want}")
        fitted[name] = t
    if cfg.tie_embeddings:
        fitted["head.weight"] = fitted["tok_emb.weight"]
    missing = set(own) - set(fitted)
    if missing:
        raise UserError(f"weights do not fit the model: no value for {', '.join(sorted(missing))}")
    model.load_state_dict(fitted)
    model.zero_padding_rows()
    return model


def _read_hf(folder: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    cfg, tied = hf_config(_read_json(folder / "config.json"), folder / "config.json")
    src = {k.removeprefix("transformer."): v for k, v in _read_hf_tensors(folder).items()}
    plan: Plan = [("tok_emb.weight", ["wte.weight"], False), ("pos_emb.weight", ["wpe.weight"], False)]
    for i in range(cfg.n_layers):
        plan += [(f"blocks.{i}.{g}", [f"h.{i}.{h}"], t) for g, h, t in HF_BLOCK]
    plan += [("ln_f.weight", ["ln_f.weight"], False), ("ln_f.bias", ["ln_f.bias"], False)]
    if not tied:
        if "lm_head.weight" not in src:
            raise UserError(f"{folder}: config.json has tie_word_embeddings=false but the weights have no lm_head.weight")
        plan.append(("head.weight", ["lm_head.weight"], False))
    else:
        src.pop("lm_head.weight", None)  # tied: HF ignores a stored lm_head too
    return cfg, _gather(src, plan, cfg, folder)


def hf_config(d: dict, where: Path | str) -> tuple[GPTConfig, bool]:
    """GPTConfig and tie flag from a Hugging Face GPT-2 config.json; anything gptlit cannot run is an error."""

    def bad(field: str, value, fix: str):
        return UserError(f"{where}: {field}={json.dumps(value)} is not supported; {fix}")

    if d.get("model_type") != "gpt2":
        raise bad("model_type", d.get("model_type"), "gptlit loads GPT-2 (model_type gpt2)")
    for arch in d.get("architectures") or []:
        if arch not in ARCHITECTURES:
            raise bad("architectures", d["architectures"], f"gptlit loads {' or '.join(ARCHITECTURES)}")
    if d.get("activation_function", "gelu_new") not in ACTIVATIONS:
        raise bad("activation_function", d["activation_function"], f"gptlit's MLP uses the tanh GELU ({', '.join(ACTIVATIONS)})")
    if abs(float(d.get("layer_norm_epsilon", 1e-5)) - 1e-5) > 1e-12:
        raise bad("layer_norm_epsilon", d["layer_norm_epsilon"], "gptlit's LayerNorm uses 1e-5")
    for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if d.get(flag, ok) != ok:
            raise bad(flag, d[flag], f"gptlit's attention needs {flag}={json.dumps(ok)}")
    for key in ("n_embd", "n_head", "n_layer", "vocab_size"):
        if not isinstance(d.get(key), int):
            raise UserError(f"{where}: {key} is missing or not an integer ({d.get(key)!r})")
    n_pos = d.get("n_positions", d.get("n_ctx"))
    if not isinstance(n_pos, int):
        raise UserError(f"{where}: n_positions is missing or not an integer ({n_pos!r})")
    if d.get("n_inner") not in (None, 4 * d["n_embd"]):
        raise bad("n_inner", d["n_inner"], f"gptlit's MLP is 4 * n_embd = {4 * d['n_embd']} wide")
    try:
        cfg = GPTConfig(
            vocab_size=d["vocab_size"], context_length=n_pos, emb_dim=d["n_embd"], n_heads=d["n_head"],
            n_layers=d["n_layer"], drop_rate=0.0, qkv_bias=True, tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        )
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return cfg, cfg.tie_embeddings


def _read_hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for index, load in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", _torch_load)):
        if (folder / index).is_file():  # sharded: the index names the file of each tensor
            shards = sorted(set(_read_json(folder / index).get("weight_map", {}).values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(load(str(folder / shard)))
            return out
    if (folder / "model.safetensors").is_file():
        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"{folder / 'model.safetensors'} is not a readable safetensors file ({e}); is the download complete?") from None
    if (folder / "pytorch_model.bin").is_file():
        return _torch_load(folder / "pytorch_model.bin")
    raise UserError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin; copy the weight file too")


def _read_book(f: Path, n_heads: int | None) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    src = _torch_load(f)
    if isinstance(src.get("model_state_dict"), dict):  # the book's model_and_optimizer.pth
        src = src["model_state_dict"]
    if "trf_blocks.0.att.W_query.weight" not in src:
        hint = " (it looks like a Hugging Face state dict: give its folder with config.json)" if any(k.endswith("wte.weight") for k in src) else ""
        raise UserError(f"{f} is not a GPT state dict in the book's layout: no trf_blocks.0.att.W_query.weight{hint}")
    for key in ("tok_emb.weight", "pos_emb.weight"):
        if key not in src or src[key].dim() != 2:
            raise UserError(f"{f}: tensor {key} is missing or not a matrix")
    vocab, emb = src["tok_emb.weight"].shape
    n_layers = 1 + max(int(m.group(1)) for k in src if (m := re.match(r"trf_blocks\.(\d+)\.", k)))
    if n_heads is None:
        if emb not in GPT2_HEADS:
            raise UserError(
                f"{f}: emb_dim={emb} is not one of GPT-2's sizes ({', '.join(map(str, GPT2_HEADS))}), so the number "
                f"of attention heads is unknown; pass it (model.n_heads=... or n_heads=...)"
            )
        n_heads = GPT2_HEADS[emb]
    head = src.get("out_head.weight")
    try:
        cfg = GPTConfig(
            vocab_size=vocab, context_length=src["pos_emb.weight"].size(0), emb_dim=emb, n_heads=n_heads,
            n_layers=n_layers, drop_rate=0.0, qkv_bias="trf_blocks.0.att.W_query.bias" in src,
            tie_embeddings=head is None or (head.shape == src["tok_emb.weight"].shape
                                            and torch.equal(head, src["tok_emb.weight"])),
        )
    except UserError as e:
        raise UserError(f"{f}: {e}") from None
    plan: Plan = [("tok_emb.weight", ["tok_emb.weight"], False), ("pos_emb.weight", ["pos_emb.weight"], False)]
    for i in range(n_layers):
        plan += [(f"blocks.{i}.{g}", [f"trf_blocks.{i}.{b}" for b in books], False) for g, books in BOOK_BLOCK
                 if cfg.qkv_bias or g != "attn.qkv.bias"]
    plan += [("ln_f.weight", ["final_norm.scale"], False), ("ln_f.bias", ["final_norm.shift"], False)]
    if cfg.tie_embeddings:
        src.pop("out_head.weight", None)
    else:
        plan.append(("head.weight", ["out_head.weight"], False))
    return cfg, _gather(src, plan, cfg, f)


def _shape(name: str, cfg: GPTConfig) -> tuple[int, ...]:
    """Shape of a gptlit tensor, with the vocabulary unpadded and every position of the weights (from the model code)."""
    return tensor_shapes(dataclasses.replace(cfg, pad_vocab_multiple=1))[name]


def _gather(src: dict, plan: Plan, cfg: GPTConfig, where: Path) -> dict[str, torch.Tensor]:
    """Pick, check, transpose and concatenate the source tensors of each gptlit tensor."""
    out, used = {}, set()
    for name, keys, transposed in plan:
        want = _shape(name, cfg)
        part = (want[0] // len(keys), *want[1:])
        if transposed:
            part = part[::-1]
        pieces = []
        for k in keys:
            if k not in src:
                raise UserError(f"{where}: tensor {k} is missing; is this a complete GPT-2 checkpoint?")
            t = src[k]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != part:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise UserError(f"{where}: tensor {k} has shape {got}, but the config ({_describe(cfg)}) needs {part}")
            pieces.append(t.t() if transposed else t)
            used.add(k)
        out[name] = torch.cat(pieces).float().contiguous()
    extra = sorted(k for k in src if k not in used and not IGNORED.match(k))
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise UserError(f"{where}: unexpected tensors {', '.join(extra[:3])}{more}; not a GPT-2 language model?")
    return out


def _describe(cfg: GPTConfig) -> str:
    return f"emb_dim {cfg.emb_dim}, n_layers {cfg.n_layers}, vocab {cfg.vocab_size}, context {cfg.context_length}"


def _read_json(f: Path) -> dict:
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{f} is not readable JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{f} is not a JSON object")
    return d


def _torch_load(f: str | Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" such as {found.group(1)}" if found else ""
        raise UserError(
            f"{f} was refused: it contains arbitrary Python objects{what}, which run code when unpickled, and gptlit "
            f"will not load it unsafely; on a machine you trust, re-save it as a plain state dict "
            f"(torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except Exception as e:  # noqa: BLE001 - a damaged file can fail anywhere in the unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{f} is not a readable PyTorch file ({first}); is it complete?") from None
    if not isinstance(obj, dict):
        raise UserError(f"{f} holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


# writing a Hugging Face folder ---------------------------------------------------------------------------------------
def write_hf_folder(model: GPT, out_dir: str | Path, tokenizer: bool = False) -> list[Path]:
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads. Returns the files.

    tokenizer=True: also the model's tokenizer (gptlit.model.tokenizer.tokenizer_of: the checkpoint's, else
    GPT-2's) as tokenizer.json, tokenizer_config.json and special_tokens_map.json, which transformers'
    AutoTokenizer.from_pretrained(out_dir) loads offline (export.py writes them; GPT-2's tokenizer.json is
    built from the ranks gptlit ships). Raises UserError, before writing anything, when the model has a
    field GPT-2 cannot express."""
    from safetensors.torch import save_file

    cfg, sd = model.cfg, model.state_dict()
    check_gpt2_expressible(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    names = [("tok_emb.weight", "wte.weight", False), ("pos_emb.weight", "wpe.weight", False)]
    for i in range(cfg.n_layers):
        names += [(f"blocks.{i}.{g}", f"h.{i}.{h}", t) for g, h, t in HF_BLOCK]
    names += [("ln_f.weight", "ln_f.weight", False), ("ln_f.bias", "ln_f.bias", False)]
    for name, hf, transposed in names:
        t = sd.get(name)
        if t is None:  # no qkv bias in gptlit: GPT-2 always has one, so it is zero
            t = torch.zeros(_shape(name, dataclasses.replace(cfg, qkv_bias=True)))
        t = t[: cfg.vocab_size] if name == "tok_emb.weight" else t
        tensors[f"transformer.{hf}"] = (t.t() if transposed else t).detach().float().contiguous().clone()
    if not cfg.tie_embeddings:  # tied: HF ties lm_head to wte itself (safetensors refuses shared tensors)
        tensors["lm_head.weight"] = sd["head.weight"][: cfg.vocab_size].detach().float().contiguous().clone()
    weights = out / "model.safetensors"
    with atomic_file(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        # safetensors creates its file readable by its owner only (0600); like every other file
        # gptlit writes, the weights follow the umask (0644 under the usual 022)
        os.chmod(tmp, 0o666 & ~current_umask())
    config = out / "config.json"
    eot = tokenizer_of(model).eot_id
    atomic_write(config, json.dumps({**hf_config_dict(cfg), "bos_token_id": eot, "eos_token_id": eot}, indent=2) + "\n")
    return [config, weights, *(tokenizer_of(model).save(out) if tokenizer else ())]


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def hf_config_dict(cfg: GPTConfig) -> dict:
    """A Hugging Face GPT-2 config.json for a gptlit config: GPT-2's fixed values, then each HFKeys field."""
    d = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "use_cache": True,
    }
    for name, rule in HF_FIELDS.items():
        if isinstance(rule, HFKeys):
            d.update(dict.fromkeys(rule.keys, getattr(cfg, name)))
    return d
