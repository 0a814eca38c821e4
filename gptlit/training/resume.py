"""Exact resume: what every checkpoint keeps besides Lightning's own state, and the check before a resume.

Each checkpoint gets a `gptlit_resume` entry: the epoch, the batches of it trained up to the last
finished optimizer step, the shuffle seed, the fingerprint of the data order (batch size, processes,
windows, corpus) and the RNG states of every rank (torch, CUDA, numpy, python) as they were at that
step. Lightning 2.6 saves no RNG state, so without them dropout masks after a resume differ.

A checkpoint written inside an accumulation (Ctrl-C after k of an optimizer step's n micro-batches, one
process) also keeps those k micro-batches (`partial`): the gradient so far (every parameter's p.grad),
their losses, the tokens seen and the RNG states after the k-th, and Lightning's batch counts at
micro-batch k. A resume with the same micro-batch plan puts the gradient back and goes on with
micro-batch k+1, as the uninterrupted run would; otherwise that step starts again from its first
micro-batch (one line says so).
"""

from __future__ import annotations

import random
import warnings

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from gptlit.core.errors import UserError
from gptlit.data.sampler import TrainOrder, default_seed, order_fingerprint
from gptlit.training.contracts import DrawsAtStepEnd

KEY = "gptlit_resume"
FORMAT = 1


def rng_state() -> dict:
    """This process's RNG states, as plain tensors and numbers (checkpoints load with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def gather(obj, trainer) -> list:
    """obj from every rank, in rank order (a collective: every rank calls it, as every rank calls
    trainer.save_checkpoint)."""
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * trainer.world_size
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


class ExactResume(L.Callback):
    """Tracks where the data order stands at the last finished optimizer step, snapshots the RNG states
    there, writes both into every checkpoint and restores them on resume.

    A batch counts as consumed only once its optimizer step has finished (with gradient accumulation,
    the step after its last micro-batch), so a checkpoint written on a crash never skips one; a checkpoint
    written inside an accumulation on one process (a Ctrl-C) also keeps the micro-batches done since, with
    their gradient (`partial_step`), and Lightning's counts at them.
    gptlit.run.build puts this callback first, so the checkpoint callbacks see this step's state.
    """

    def __init__(self, fingerprint: dict, seed: int, batches_per_epoch: int):
        self.fingerprint, self.seed, self.batches_per_epoch = fingerprint, seed, batches_per_epoch
        self.epoch = 0  # trainer.current_epoch of the batches counted below
        self.stepped = 0  # batches of that epoch trained up to the last finished optimizer step
        self.ended = 0  # batches of that epoch whose on_train_batch_end ran (Lightning resumes after these)
        self.rng = [rng_state()]  # every rank's RNG states at the last finished step (this rank's alone until saved)
        self._step_seen: int | None = None
        self._pending_rng: dict | None = None  # to restore before the first batch after a resume
        self._in_optimizer_step = False
        self._fix_log_step = False  # set by a resume (see on_train_batch_start)
        self.local_only = False  # a checkpoint written by one rank alone (after a failure): no gather
        self._tokens_at_step: int | None = None  # the module's tokens_seen at the last finished step
        self._pending_tokens: int | None = None  # to restore at train start after a resume
        self.keep_partial = True  # plan_resume's verdict on the checkpoint's partial step (setup_exact_resume)
        self._pending_partial: dict | None = None  # a partial step to put back at train start
        self.saved_partial: tuple[int, int] | None = None  # (micro-batches, of) kept by the last checkpoint written
        self.order = None  # the datamodule's TrainOrder, whose seed a checkpoint records (set by setup_exact_resume)

    @property
    def at_step_boundary(self) -> bool:
        """Whether a checkpoint written now resumes exactly: no optimizer step is half done (the weights and
        optimizer state are those of the last finished step). Inside an accumulation (micro-batches since
        that step, e.g. at a Ctrl-C) the checkpoint keeps those micro-batches where `partial_step` can (their
        gradient, losses, tokens, RNG states; Lightning's counts at them), else it is written as of that step:
        Lightning's batch count and the tokens seen set back to it, the micro-batches since trained again."""
        return not self._in_optimizer_step

    def on_train_start(self, trainer, pl_module):
        self._step_seen = trainer.global_step
        if self._pending_rng is None:
            self.rng = [rng_state()]
        if self._pending_tokens is not None:
            pl_module.tokens_seen = self._pending_tokens
        self._pending_tokens = None
        self._tokens_at_step = pl_module.tokens_seen
        part, self._pending_partial = self._pending_partial, None
        if part is not None:  # the micro-batches of this step done before the interrupt: their gradient back
            self._tokens_at_step = part["tokens_at_step"]
            params = dict(pl_module.named_parameters())
            for name, g in part["grads"].items():
                p = params[name]
                p.grad = None if g is None else g.to(device=p.device, dtype=p.dtype).clone()
            pl_module.tokens_seen = int(part["tokens_seen"])
            pl_module.restore_step_losses(list(part["losses"]))
            pl_module.accumulated = {"step": trainer.global_step, "n": int(part["micro_batches"]),
                                     "rng": part["rng"], "tokens_seen": int(part["tokens_seen"])}
            self._pending_rng = part["rng"]  # the RNG states after its last micro-batch, not the step's start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._fix_log_step:
            # Lightning 2.6 restores its logging step (_batches_that_stepped) one short when the checkpoint
            # was written after the step's batch had completed (at a validation, at the end), so every
            # metric after a resume was logged at the previous step: train/tokens_seen looked one batch
            # too high. With one optimizer it equals the optimizer steps; set here, after Lightning's own
            # adjustment in the epoch loop's reset and before this batch logs anything.
            self._fix_log_step = False
            if pl_module.automatic_optimization:
                trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
        if self._pending_rng is not None:  # after every hook that ran between the load and this batch
            set_rng_state(self._pending_rng)
            self._pending_rng = None
            self.rng = [rng_state()]
        if trainer.current_epoch != self.epoch:
            self.epoch, self.stepped, self.ended = trainer.current_epoch, 0, 0

    def restore_rng_now(self) -> None:
        """Put back a resumed checkpoint's RNG states now rather than before the first batch (data.order=global
        draws the epoch's order from them before that batch is fetched); nothing without a pending one."""
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
            self.rng = [rng_state()]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._in_optimizer_step = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._in_optimizer_step = False
        self.ended = batch_idx + 1
        if trainer.global_step != self._step_seen:  # an optimizer step finished with this batch
            self._step_seen, self.stepped = trainer.global_step, batch_idx + 1
            self.rng = [rng_state()]
            self._tokens_at_step = pl_module.tokens_seen

    def partial_step(self, trainer, pl_module) -> int:
        """How many micro-batches of the unfinished optimizer step a checkpoint written now keeps (their
        gradient so far, whose count pl_module.accumulated tracks): 0 at a step boundary, under several
        processes (each rank's gradient differs: the checkpoint holds whole steps there), under a sharding
        strategy (its p.grad are shards) and once every micro-batch of the step ran its backward (the
        optimizer step itself is what is missing)."""
        acc = pl_module.accumulated
        every = int(trainer.accumulate_grad_batches or 1)
        if (acc is None or acc["step"] != trainer.global_step or self._in_optimizer_step or every < 2
                or trainer.current_epoch != self.epoch or trainer.world_size > 1 or self.local_only
                or type(trainer.strategy).__name__ not in ("SingleDeviceStrategy", "DDPStrategy")):
            return 0
        n = int(acc["n"])
        if not 0 < n < every or self.stepped + n >= self.batches_per_epoch:
            return 0
        return n

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        n = self.partial_step(trainer, pl_module)
        checkpoint[KEY] = {
            "format": FORMAT,
            "epoch": self.epoch,
            "batches": self.stepped,
            "seed": self.order.seed if self.order is not None else self.seed,  # data.order=global: the epoch's
            "data": dict(self.fingerprint),
            "rng": [self.rng[0]] if self.local_only else gather(self.rng[0], trainer),
            "exact": self.at_step_boundary,
        }
        if n:  # Lightning's counts at micro-batch n of the step, all equal (as at a validation)
            rewind_batches(checkpoint, self.stepped + n, force=True)
            checkpoint[KEY]["tokens_seen"] = self._tokens_at_step  # the step's start: a resume without the partial
        elif trainer.current_epoch == self.epoch and rewind_batches(checkpoint, self.stepped):
            checkpoint[KEY]["tokens_seen"] = self._tokens_at_step  # inside an accumulation: as of the last step
        self.saved_partial = None
        if n:
            acc = pl_module.accumulated
            checkpoint[KEY]["partial"] = {
                "step": trainer.global_step,
                "micro_batches": n,
                "accumulate": int(trainer.accumulate_grad_batches),
                "grads": {name: None if p.grad is None else p.grad.detach()
                          for name, p in pl_module.named_parameters()},
                "losses": [v.detach().cpu() for v in pl_module.step_losses_so_far(n)],
                "tokens_seen": acc["tokens_seen"],
                "rng": acc["rng"],
            }
            self.saved_partial = (n, int(trainer.accumulate_grad_batches))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Lightning restores the loops after the callbacks, from this same dict
        self._fix_log_step = True
        state = checkpoint.get(KEY)
        if not state:
            return
        self.epoch, self.stepped = int(state["epoch"]), int(state["batches"])
        if self.stepped >= self.batches_per_epoch:  # saved at the end of its epoch: the next one is up
            self.epoch, self.stepped = self.epoch + 1, 0
            start_next_epoch_afresh(checkpoint)
        self.ended = self.stepped
        self._pending_tokens = state.get("tokens_seen")
        rngs = state.get("rng") or []
        if state.get("data") == self.fingerprint and len(rngs) == trainer.world_size:
            self._pending_rng = rngs[trainer.global_rank]
        part = state.get("partial")
        if part is None:
            return
        if not self.keep_partial:  # plan_resume said why; the data order starts at the step's start already
            rewind_batches(checkpoint, self.stepped)
            return
        why = None
        params = dict(pl_module.named_parameters())
        grads = part.get("grads") or {}
        bad = next((k for k, g in grads.items() if k not in params or (g is not None and g.shape != params[k].shape)),
                   None) or next((k for k in params if k not in grads), None)
        if bad is not None:
            why = f"its gradient does not fit the model (parameter {bad})"
        elif guard_rolled_back(trainer, checkpoint):
            why = "the loss guard rolls back to it (no partial gradient is carried over a rollback)"
        if why is not None:  # the step starts again: Lightning's counts and the data position at its start
            rank_zero_info(f"warning: {partial_words(state)}, but {why}: step {part['step'] + 1} starts again "
                           f"from its first micro-batch")
            rewind_batches(checkpoint, self.stepped)
            order = getattr(trainer.datamodule, "order", None)  # the loaders are made after this hook
            if order is not None:
                order.start_batch = self.stepped  # its seed, epoch and mode as setup_exact_resume set them
            return
        n = int(part["micro_batches"])
        self.ended = self.stepped + n
        self._pending_partial = {**part, "tokens_at_step": state.get("tokens_seen")}


def rewind_batches(checkpoint: dict, stepped: int, force: bool = False) -> bool:
    """Lightning's batch counts in a checkpoint written after micro-batches past the last optimizer step
    (`stepped` batches of the epoch), set back to that step as a checkpoint written there (at a validation)
    has them: every counter equal. True if they were past it. force: set them to `stepped` even when they
    are not past it (a partial step kept at micro-batch `stepped`)."""
    batches = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not batches or (int(batches.get("current", {}).get("ready", 0)) <= stepped and not force):
        return False
    current, total = batches.get("current", {}), batches.get("total", {})
    done = stepped
    for k in list(current):
        total[k] = int(total.get(k, 0)) - int(current[k]) + done
        current[k] = done
    batches["is_last_batch"] = False
    return True


def guard_rolled_back(trainer, checkpoint: dict) -> bool:
    """Whether this fit is the loss guard's rollback to `checkpoint` (the guard's rollback count, set by
    gptlit.run.plan.RunPlan.after_rollback, is past the checkpoint's own)."""
    guard = next((c for c in trainer.callbacks if type(c).__name__ == "LossGuard"), None)
    if guard is None:
        return False
    saved = (checkpoint.get("callbacks") or {}).get(guard.state_key) or {}
    return int(getattr(guard, "rollbacks", 0)) > int(saved.get("rollbacks", 0))


def partial_words(state: dict) -> str:
    """'last.ckpt holds 2 of 4 micro-batches of step 5 (their gradient so far)', for a checkpoint's KEY entry."""
    part = state["partial"]
    return (f"the checkpoint holds {part['micro_batches']} of {part['accumulate']} micro-batches of step "
            f"{part['step'] + 1} (their gradient so far)")


# The check before a resume compares the checkpoint's data-order fingerprint with this run's
# (gptlit.data.sampler.order_fingerprint) and, where they differ, names the setting to put back.
# What sets each entry, as the error says it:
FINGERPRINT_KEYS = {
    "order": "data.order",
    "batch_size": "data.batch_size",
    "micro_batch_size": "data.micro_batch_size",
    "world_size": "processes (trainer.devices x trainer.num_nodes)",
    "max_length": "data.max_length",
    "stride": "data.stride",
    "windows": "train windows (the corpus or data.val_fraction)",
    "corpus": "training corpus (token digest)",
}
# Entries that only cut the order into batches: at an epoch's first batch they may change.
BATCH_LAYOUT_KEYS = ("batch_size", "micro_batch_size", "world_size")


def describe_setting(key: str, value) -> str:
    """A fingerprint entry and its value as a message says it: `data.batch_size=4`, `2 processes (...)`."""
    what = FINGERPRINT_KEYS[key]
    if key == "order":
        value = value or "sampler"
    if what.startswith("data."):
        return f"{what}={value}"
    if key == "corpus":
        return f"the training corpus with token digest {value}"
    return f"{value} {what}"


def setting_fix(key: str, value) -> str:
    """What to do to continue the checkpoint's order exactly."""
    what = FINGERPRINT_KEYS[key]
    if key == "order":
        value = value or "sampler"
    if what.startswith("data."):
        return f"set {what}={value} as the checkpoint has"
    if key == "world_size":
        return f"run on {value} processes as the checkpoint did"
    return "train on the checkpoint's corpus and data settings"


def partial_verdict(state: dict, fingerprint: dict, accumulate: int, world_size: int) -> str | None:
    """Why a checkpoint's partial step cannot go on in this run (None: it can): another micro-batch plan
    (micro-batch size or micro-batches a step) or another number of processes."""
    part = state.get("partial")
    if part is None:
        return None
    saved = state.get("data") or {}
    if world_size > 1:
        return f"this run has {world_size} processes (a partial step is kept for one process only)"
    for k in BATCH_LAYOUT_KEYS:
        if saved.get(k) != fingerprint.get(k):
            return f"this run has {describe_setting(k, fingerprint.get(k))} where it had {describe_setting(k, saved.get(k))}"
    if int(part.get("accumulate", 0)) != int(accumulate):
        return f"this run plans {accumulate} micro-batches a step where it had {part.get('accumulate')}"
    if state.get("data") != fingerprint:
        return "this run's data order differs"
    return None


def start_next_epoch_afresh(checkpoint: dict) -> None:
    """For a checkpoint written once its epoch had ended: make Lightning start the next epoch at its
    first batch.

    With max_steps set, Lightning 2.6 treats every resume as a restart inside the saved epoch
    (FitLoop.restarting is forced on for step-based training), so the epoch loop kept the saved
    epoch's batch count: the next epoch ended after one batch (61 -> 62 steps, then "max_epochs=2
    reached"). Its per-epoch counters are zeroed here when the fit loop had completed that epoch, as
    Lightning itself does when a new epoch starts; the totals are kept."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = loops.get("epoch_progress"), loops.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return
    cur = epochs.get("current", {})
    if not (cur.get("ready") == cur.get("started") == cur.get("processed") == cur.get("completed")):
        return  # the epoch's end was not completed: Lightning's own restart handles it
    batches["current"] = {k: 0 for k in batches.get("current", {})}
    batches["is_last_batch"] = False


def plan_resume(ckpt: dict, ckpt_path: str, fingerprint: dict, batches_per_epoch: int, allow_inexact: bool,
                accumulate: int = 1, world_size: int = 1) -> dict | None:
    """Where a resumed run's data order starts: {"seed", "epoch", "start_batch"}, or None for a fresh
    order. Raises UserError, naming the difference, when the order cannot continue exactly and
    `allow_inexact` (resume_inexact=true) is off. With "partial": True, the checkpoint's unfinished step
    (its micro-batches done, see partial_verdict) goes on, and start_batch is past them."""
    epoch = int(ckpt.get("epoch", 0))
    state = ckpt.get(KEY)
    if not state:
        rank_zero_info(
            f"warning: ckpt_path={ckpt_path} was written before exact resume (it has no data position): "
            f"the data order of epoch {epoch} starts over from its first batch"
        )
        return None
    seed, epoch, batches = state["seed"], int(state["epoch"]), int(state["batches"])
    seed = None if seed is None else int(seed)  # data.order=global before its first draw
    saved = state.get("data") or {}
    # At the first batch of an epoch (a checkpoint written before the first step finished, say) no
    # batch of the order was consumed: batch size, micro-batch size and process count only cut the
    # order into batches, so any of them continues it exactly.
    layout_only = BATCH_LAYOUT_KEYS if batches == 0 and state.get("exact", True) else ()
    diff = next((k for k in FINGERPRINT_KEYS if k not in layout_only and saved.get(k) != fingerprint.get(k)), None)
    if diff is not None:
        was, now = describe_setting(diff, saved.get(diff)), describe_setting(diff, fingerprint.get(diff))
        msg = (f"ckpt_path={ckpt_path} cannot continue its data order exactly: it was trained with "
               f"{was}, this run has {now}")
        if not allow_inexact:
            raise UserError(f"{msg}; {setting_fix(diff, saved.get(diff))}, or pass resume_inexact=true "
                            f"to start epoch {epoch}'s order afresh")
        rank_zero_info(f"warning: {msg}; resume_inexact=true: epoch {epoch}'s data order starts afresh")
        return {"seed": seed, "epoch": epoch, "start_batch": 0}
    if not state.get("exact", True):
        rank_zero_info(f"warning: ckpt_path={ckpt_path} was written between optimizer steps: "
                       f"the data order of epoch {epoch} starts over from its first batch")
        return {"seed": seed, "epoch": epoch, "start_batch": 0}
    if batches >= batches_per_epoch:  # written at the end of its epoch
        epoch, batches = epoch + 1, 0
    partial = state.get("partial")
    if partial is not None:
        why = partial_verdict(state, fingerprint, accumulate, world_size)
        if why is None:
            return {"seed": seed, "epoch": epoch, "start_batch": batches + int(partial["micro_batches"]), "partial": True}
        rank_zero_info(f"warning: {partial_words(state)}, but {why}: step {partial['step'] + 1} starts again "
                       f"from its first micro-batch")
    return {"seed": seed, "epoch": epoch, "start_batch": batches}


def setup_exact_resume(dm, trainer, seed: int | None, ckpt_path: str | None, allow_inexact: bool,
                       ckpt: dict | None = None) -> ExactResume:
    """Set the datamodule's training order (seed, and where a resume starts) and put the ExactResume
    callback first among the trainer's callbacks. Raises UserError before any training."""
    # What the data layer says about this run's order, all asked before anything is decided: its batches an
    # epoch (the sampler's length does not depend on the order's seed or position), its fingerprint and the
    # shuffle seed of a fresh order (the run's seed, else one drawn for this run: a resume takes the checkpoint's).
    # The seed comes after the sampler: one made before the order is set draws a seed of its own into the same
    # environment entry, which would replace the run's that its DDP ranks read (default_seed).
    sampler = dm.train_sampler(trainer)
    per_epoch = sampler.batches_per_epoch()
    mode = dm.order.mode
    fingerprint = order_fingerprint(dm.train_set, dm.config.batch_size, trainer.world_size, dm.loader_batch_size, mode)
    fresh_seed = default_seed(seed, run=str(trainer.default_root_dir)) if mode == "sampler" else None
    plan = (plan_resume(ckpt, ckpt_path, fingerprint, per_epoch, allow_inexact,
                        int(trainer.accumulate_grad_batches or 1), trainer.world_size) if ckpt_path else None)
    if mode == "global":  # the seed is drawn at each epoch's start; a resume mid-epoch takes the drawn one
        order = TrainOrder(None, mode=mode) if plan is None else TrainOrder(
            plan["seed"] if plan["start_batch"] else None, plan["epoch"], plan["start_batch"], mode=mode)
    elif plan is None:
        order = TrainOrder(fresh_seed)
    else:
        order = TrainOrder(plan["seed"], plan["epoch"], plan["start_batch"])
        # Lightning warns on every mid-epoch resume that the train loader "is not resumable" (it has no
        # state_dict of its own); the sampler starts at the checkpoint's batch, so the warning is
        # wrong here. Only that message is filtered, only when gptlit sets the data position.
        warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable", category=PossibleUserWarning)
    dm.set_plan(order=order)
    tracker = ExactResume(fingerprint, order.seed, per_epoch)
    tracker.keep_partial = bool(plan and plan.get("partial"))
    if mode == "global":
        tracker.order, order.before_draw = order, tracker.restore_rng_now
    # first, so the checkpoint callbacks see this step's state; after any callback that draws from the RNGs at
    # a step's end as part of the step (a DrawsAtStepEnd: gptlit.training.callbacks.book.BookEval), so the snapshot includes its draws
    after = [i + 1 for i, c in enumerate(trainer.callbacks) if isinstance(c, DrawsAtStepEnd)]
    trainer.callbacks.insert(max(after, default=0), tracker)
    return tracker
