"""The model config of a run from the files it names: the composed config alone, a checkpoint (resume,
task=validate) or pretrained weights (model.init_from); the tokenizer that goes with them.

  model_for_run          config + files -> RunModel: the checked GPTConfig, ckpt path, initial weights, tokenizer
  reconcile              weights' architecture + the user's runtime fields, fields chosen on purpose checked
  explicit_model_fields  which model fields the user chose (command line, preset, experiment file)
  preset_label           how the log names a model whose architecture came from a file
gptlit.run.plan calls model_for_run once, while it resolves a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gptlit.core.errors import UserError
from gptlit.core.files import user_path
from gptlit.core.settings import plain
from gptlit.interop.checkpoints import check_resumable, checkpoint_tokenizer, find_checkpoint, load_checkpoint, saved_model_config
from gptlit.interop.hf import read_pretrained
from gptlit.model.config import PRESETS, GPTConfig
from gptlit.model.tokenizer import Tokenizer, from_settings, pretrained_tokenizer


@dataclass
class RunModel:
    """What a training or validation run starts from (see model_for_run)."""

    config: GPTConfig
    ckpt_path: str | None = None  # the checkpoint Lightning resumes from (train) or validates (task=validate)
    init_state: dict[str, torch.Tensor] | None = None  # pretrained weights to load before training (model.init_from)
    source: str | None = None  # where the architecture came from, when not from the config alone
    # the run's tokenizer: a Tokenizer (gpt2, file, a checkpoint's), or the `tokenizer` group's settings of a
    # tokenizer=bpe still to be trained on the corpus (GPTDataModule.use_tokenizer)
    tokenizer: Tokenizer | dict | None = None
    label: str = "custom"  # how the run's log names the model (preset_label when it came from a file)


def tokenizer_settings(cfg) -> dict:
    """A composed config's `tokenizer` group node as a dict (a config composed without the group: gpt2)."""
    node = cfg.get("tokenizer") if hasattr(cfg, "get") else None
    return dict(plain(node) or {"kind": "gpt2"})


def model_for_run(cfg) -> RunModel:
    """A composed train config (Hydra node or dict with `model`, `task`, `ckpt_path`) and the files
    it names -> the checked model config, the checkpoint path and any initial weights.

      task=validate ckpt_path=X   architecture from the checkpoint (best of a run directory)
      model.init_from=X           architecture from the pretrained weights (gptlit.interop.hf reads them)
      ckpt_path=X (task=train)    resume from X (last of a run directory); its model config must match
    Model fields the user chose explicitly must agree with the weights (see reconcile).
    The tokenizer: a checkpoint's own (a different one chosen on purpose is refused, see tokenizer_for_run);
    model.init_from: the weights' (GPT-2's, or an export's tokenizer.json; another chosen on purpose is
    refused); else the `tokenizer` group's, and model.vocab_size follows it.
    """
    user = {k: cfg["model"][k] for k in cfg["model"]}
    task, ckpt = cfg.get("task", "train"), cfg.get("ckpt_path")
    settings = tokenizer_settings(cfg)
    model_cfg = GPTConfig.from_dict(user)  # the config's own values must be valid even where files replace them
    if task == "validate" and ckpt:
        path = find_checkpoint(ckpt, prefer="best", key="ckpt_path")
        merged = reconcile(user, saved_model_config(path), str(path), explicit_model_fields(user), checkpoint=True)
        return RunModel(merged, ckpt_path=str(path), source=str(path), tokenizer=tokenizer_for_run(cfg, settings, path),
                        label=label_for(user, merged, str(path)))
    init_tok = None
    if user.get("init_from"):  # the weights read the ids of their own tokenizer (GPT-2's, or an export's)
        init_tok = pretrained_tokenizer(user_path(user["init_from"]))
        run_tok = from_settings(settings) if settings.get("kind", "gpt2") != "bpe" else None
        if tokenizer_chosen(settings) and (run_tok is None or run_tok.fingerprint != init_tok.fingerprint):
            raise UserError(
                f"model.init_from={user['init_from']} holds weights that read the ids of the tokenizer "
                f"{init_tok.describe()}, but this run has tokenizer={settings.get('kind', 'gpt2')}; drop the tokenizer "
                f"override (the weights' tokenizer is used), or drop model.init_from to train a model from scratch "
                f"with tokenizer={settings.get('kind', 'gpt2')}"
            )
    tokenizer = None if ckpt else init_tok or from_settings(settings)
    if ckpt is None and init_tok is None and settings.get("kind", "gpt2") != "gpt2":  # the vocabulary follows the tokenizer
        user["vocab_size"] = tokenizer.vocab_size if tokenizer is not None else settings["vocab_size"]
        model_cfg = GPTConfig.from_dict(user)
    init_state, source = None, None
    if user.get("init_from"):
        explicit = explicit_model_fields(user)
        src = user_path(user["init_from"])
        try:
            weights, init_state = read_pretrained(src, n_heads=user.get("n_heads") if "n_heads" in explicit else None)
        except UserError as e:
            raise UserError(f"model.init_from={user['init_from']}: {e}") from None
        model_cfg, source = reconcile(user, weights, str(src), explicit), str(src)
    path = None
    if ckpt:
        path = str(find_checkpoint(ckpt, prefer="last", key="ckpt_path"))
        tokenizer = tokenizer_for_run(cfg, settings, path)
        if tokenizer.kind != "gpt2":  # the vocabulary is the checkpoint's tokenizer's, as when it was trained
            model_cfg = dataclasses.replace(model_cfg, vocab_size=saved_model_config(path).vocab_size)
        check_resumable(path, model_cfg, ckpt)
    return RunModel(model_cfg, ckpt_path=path, init_state=init_state, source=source,
                    tokenizer=tokenizer if tokenizer is not None else settings, label=label_for(user, model_cfg, source))


def tokenizer_chosen(settings: dict) -> bool:
    """Whether the run chose its tokenizer (tokenizer=... on the command line, or a tokenizer other than the
    default gpt2 in its config) rather than leaving it to a checkpoint."""
    if settings.get("kind", "gpt2") != "gpt2":
        return True
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return any(o.split("=", 1)[0].lstrip("+~").split(".")[0] == "tokenizer" for o in HydraConfig.get().overrides.task)
    except Exception:  # pragma: no cover - no Hydra run
        pass
    return False


def tokenizer_for_run(cfg, settings: dict, path) -> Tokenizer:
    """A run from a checkpoint reads its ids with the checkpoint's tokenizer; a tokenizer the run chose that is not
    that one is refused, naming both."""
    ckpt_tok = checkpoint_tokenizer(load_checkpoint(path), path)
    if not tokenizer_chosen(settings):
        return ckpt_tok
    kind = settings.get("kind", "gpt2")
    if kind == "bpe":
        same = ckpt_tok.kind == "bpe" and settings.get("vocab_size") == saved_model_config(path).vocab_size
        mine = f"tokenizer=bpe tokenizer.vocab_size={settings.get('vocab_size')}"
    else:
        run_tok = from_settings(settings)
        same, mine = run_tok.fingerprint == ckpt_tok.fingerprint, f"tokenizer={kind} ({run_tok.describe()})"
    if not same:
        raise UserError(
            f"ckpt_path={cfg.get('ckpt_path')} was trained with the tokenizer {ckpt_tok.describe()}, but this run has "
            f"{mine}; drop the tokenizer override (a run from a checkpoint uses the checkpoint's tokenizer) "
            f"or train a new model without ckpt_path"
        )
    return ckpt_tok


def label_for(user: dict, cfg: GPTConfig, source: str | None) -> str:
    """The model's name in the run's log: the config's `model.name`, or where the architecture came from."""
    if source and "name" in user:
        return preset_label(cfg, source)
    return str(user.get("name", "custom"))


def preset_label(cfg: GPTConfig, source: str) -> str:
    """How the run's log names a model whose architecture came from `source`: `<preset or custom> from <source>`."""
    same = [n for n, p in PRESETS.items() if all(p[k] == getattr(cfg, k) for k in ("emb_dim", "n_heads", "n_layers"))]
    return f"{same[-1] if same else 'custom'} from {source}"


def explicit_model_fields(user: dict) -> dict[str, str]:
    """Model fields the user chose, each with where it was chosen; other fields may come from weights.

    A field counts as chosen when it is overridden on the command line (model.X=...), when
    the preset was picked on the command line (model=small), or when it differs from the
    preset's value (an experiment file, or overrides Hydra did not record, as with compose()).
    """
    cli, preset_picked = set(), False
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for o in HydraConfig.get().overrides.task:
                key = o.split("=", 1)[0].lstrip("+~")
                preset_picked |= key == "model"
                if key.startswith("model."):
                    cli.add(key[len("model.") :])
    except Exception:  # pragma: no cover - no Hydra run
        pass
    name = user.get("name")
    base = {**GPTConfig().to_dict(), **PRESETS.get(name, {})}
    out = {}
    # context_length last: where a preset contradicts the weights, its shape is the mismatch to name first
    for f in sorted(GPTConfig.fields_of("arch"), key=lambda f: f == "context_length"):
        if f in cli:
            out[f] = "command line"
        elif user.get(f) != base[f]:
            out[f] = "config"
        elif preset_picked:
            out[f] = f"preset {name}"
    return out


def reconcile(user: dict, weights: GPTConfig, source: str, explicit: dict[str, str], checkpoint: bool = False) -> GPTConfig:
    """The model config for these weights: architecture from the weights, runtime and training fields from the user.

    A field the user chose (see explicit_model_fields) must agree with the weights, except
    context_length, which may be lower for pretrained weights (not for a checkpoint).
    """

    def fmt(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    match = [n for n, p in PRESETS.items() if all(p[k] == getattr(weights, k) for k in ("emb_dim", "n_heads", "n_layers"))]
    for f, origin in explicit.items():
        preset_field = f in ("emb_dim", "n_heads", "n_layers") or origin.startswith("preset")
        fix = f"use model={match[-1]} or drop the override" if match and preset_field else "drop the override"
        want, have = user.get(f), getattr(weights, f)
        if want == have or (f == "context_length" and not checkpoint and 0 < want < have):
            continue
        if f == "context_length" and not checkpoint:
            raise UserError(
                f"model.context_length={want} ({origin}) exceeds the {have} positions of the weights in {source}; "
                f"use model.context_length={have} or less"
            )
        raise UserError(f"model.{f}={fmt(want)} ({origin}) contradicts the weights in {source} ({fmt(have)}); {fix}")
    context = user["context_length"] if "context_length" in explicit else weights.context_length
    # a checkpoint's tensors hold its padded vocabulary rows; pretrained files are unpadded and take the run's padding
    pad = weights.pad_vocab_multiple if checkpoint else user.get("pad_vocab_multiple", weights.pad_vocab_multiple)
    # how a step runs is the run's choice (model.activation_checkpointing=true with model.init_from, say)
    runtime = {f: user[f] for f in GPTConfig.fields_of("runtime") if f in user}
    return dataclasses.replace(
        weights, context_length=context, drop_rate=user.get("drop_rate", weights.drop_rate), pad_vocab_multiple=pad,
        **runtime,
    )
