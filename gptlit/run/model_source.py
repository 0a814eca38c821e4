"""The model config of a run from the files it names: the composed config alone, a checkpoint (resume,
task=validate) or pretrained weights (model.init_from); the tokenizer that goes with them.

  model_for_run          config + files -> RunModel: the checked GPTConfig, ckpt path, initial weights, tokenizer
  explicit_model_fields  which model fields the user chose (command line, preset, experiment file)
  tokenizer_chosen       whether the user chose the tokenizer (rather than leaving it to a checkpoint or weights)
gptlit.run.plan calls model_for_run once, while it resolves a run. What it asks of lower layers: the files'
contents (gptlit.interop.checkpoints.saved_model, gptlit.interop.hf.read_pretrained), the weights' config
with the user's fields and the resume check (gptlit.model.config: reconcile, check_resumable), the
tokenizers compared (gptlit.model.tokenizer.same_tokenizer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from gptlit.core.errors import UserError
from gptlit.core.files import user_path
from gptlit.core.settings import plain
from gptlit.interop.checkpoints import find_checkpoint, saved_model
from gptlit.interop.hf import read_pretrained
from gptlit.model.config import PRESETS, GPTConfig, check_resumable, preset_of, reconcile
from gptlit.model.tokenizer import Tokenizer, from_settings, pretrained_tokenizer, same_tokenizer


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
    name: str | None = None  # the config's model.name (None: it has none)

    @property
    def label(self) -> str:
        """How the run's log names the model: the config's model.name, or, where the architecture came from a
        file, `<preset of that shape, or custom> from <file>`."""
        if self.source and self.name is not None:
            return f"{preset_of(self.config) or 'custom'} from {self.source}"
        return "custom" if self.name is None else self.name


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
    Model fields the user chose explicitly must agree with the weights (gptlit.model.config.reconcile).
    The tokenizer: a checkpoint's own, else the pretrained weights' (GPT-2's, or an export's tokenizer.json),
    else the `tokenizer` group's, and then model.vocab_size follows it; one the run chose on purpose
    (tokenizer_chosen) that is not the checkpoint's or the weights' is refused.
    """
    user = {k: cfg["model"][k] for k in cfg["model"]}
    name = str(user["name"]) if "name" in user else None
    task, ckpt, init_from = cfg.get("task", "train"), cfg.get("ckpt_path"), user.get("init_from")
    settings = tokenizer_settings(cfg)
    chosen, explicit, kind = tokenizer_chosen(settings), explicit_model_fields(user), settings.get("kind", "gpt2")
    # the config's own values must be valid even where files replace them
    model_cfg = GPTConfig.from_dict(user)
    mine = from_settings(settings)
    mine = settings if mine is None else mine  # the run's own tokenizer, or the settings of a bpe to train

    # what the run starts from, each file found once: the architecture of the checkpoint (task=validate), of
    # the pretrained weights or of the config; a checkpoint to resume from
    arch_from_ckpt = bool(ckpt) and task == "validate"
    found = find_checkpoint(ckpt, prefer="best" if arch_from_ckpt else "last", key="ckpt_path") if ckpt else None
    saved = saved_model(found) if found else None
    pretrained = user_path(init_from) if init_from and not arch_from_ckpt else None

    # the tokenizer whose ids the weights read: the checkpoint's, else the pretrained weights', else the run's
    tokenizer = mine
    if pretrained is not None:
        tokenizer = pretrained_tokenizer(pretrained)
        if chosen and not same_tokenizer(mine, tokenizer, tokenizer.vocab_size):
            raise UserError(
                f"model.init_from={init_from} holds weights that read the ids of the tokenizer "
                f"{tokenizer.describe()}, but this run has tokenizer={kind}; drop the tokenizer "
                f"override (the weights' tokenizer is used), or drop model.init_from to train a model from scratch "
                f"with tokenizer={kind}"
            )
    if saved is not None:
        tokenizer = saved.tokenizer
        if chosen and not same_tokenizer(mine, tokenizer, saved.config.vocab_size):
            shown = (f"tokenizer=bpe tokenizer.vocab_size={settings.get('vocab_size')}" if isinstance(mine, dict)
                     else f"tokenizer={kind} ({mine.describe()})")
            raise UserError(
                f"ckpt_path={ckpt} was trained with the tokenizer {tokenizer.describe()}, but this run has "
                f"{shown}; drop the tokenizer override (a run from a checkpoint uses the checkpoint's tokenizer) "
                f"or train a new model without ckpt_path"
            )

    if arch_from_ckpt:  # validate the checkpoint's own model
        model_cfg = reconcile(user, saved.config, str(found), explicit, checkpoint=True)
        return RunModel(model_cfg, ckpt_path=str(found), source=str(found), tokenizer=tokenizer, name=name)
    init_state = None
    if pretrained is not None:  # the weights' architecture, the run's training and runtime fields
        try:
            weights, init_state = read_pretrained(pretrained, n_heads=user.get("n_heads") if "n_heads" in explicit else None)
        except UserError as e:
            raise UserError(f"model.init_from={init_from}: {e}") from None
        model_cfg = reconcile(user, weights, str(pretrained), explicit)
    if saved is not None:  # resume: the vocabulary is the checkpoint's tokenizer's, as when it was trained
        if tokenizer.kind != "gpt2":
            model_cfg = dataclasses.replace(model_cfg, vocab_size=saved.config.vocab_size)
        check_resumable(saved.fields, model_cfg, ckpt)
    elif pretrained is None and kind != "gpt2":  # the config alone: the vocabulary follows the tokenizer
        vocab = mine["vocab_size"] if isinstance(mine, dict) else mine.vocab_size
        model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
    return RunModel(model_cfg, ckpt_path=str(found) if found else None, init_state=init_state,
                    source=str(pretrained) if pretrained else None, tokenizer=tokenizer, name=name)


def _overridden() -> list[str]:
    """The keys overridden on the command line of this Hydra run (`+`/`~` dropped); none outside a Hydra run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    except Exception:  # pragma: no cover - no Hydra run
        pass
    return []


def tokenizer_chosen(settings: dict) -> bool:
    """Whether the run chose its tokenizer (tokenizer=... on the command line, or a tokenizer other than the
    default gpt2 in its config) rather than leaving it to a checkpoint."""
    return settings.get("kind", "gpt2") != "gpt2" or any(k.split(".")[0] == "tokenizer" for k in _overridden())


def explicit_model_fields(user: dict) -> dict[str, str]:
    """Model fields the user chose, each with where it was chosen; other fields may come from weights.

    A field counts as chosen when it is overridden on the command line (model.X=...), when
    the preset was picked on the command line (model=small), or when it differs from the
    preset's value (an experiment file, or overrides Hydra did not record, as with compose()).
    """
    keys = _overridden()
    cli, preset_picked = {k[len("model.") :] for k in keys if k.startswith("model.")}, "model" in keys
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
