"""The accelerate training loop every recipe shares.

``train(recipe, model, processor, tasks)`` runs it; :func:`pixtok.training.recipe.run_recipe`
builds those objects from a :class:`~pixtok.training.config.RecipeConfig`. The loop knows nothing of
any particular task: it draws a task per micro-batch (:class:`~pixtok.training.sampling.TaskMixture`),
asks the task for examples and a batch, and calls ``model(**batch).loss``.

What it guarantees:
* one ``accelerator.prepare`` of model and optimizer; mixed precision, gradient accumulation, DDP
  and FSDP come from accelerate (``recipes/accelerate/*.yaml``);
* checkpoints are atomic (:mod:`pixtok.training.checkpoint`) and ``resume_from`` continues
  exactly: same step, learning rate, data order and augmentation (sampling is a pure function of
  the counter, RNG states are in the checkpoint), and the same clock: the checkpoint keeps the
  training seconds and loss history so far, so ``time_limit_minutes`` bounds the whole run;
* a non-finite loss skips its optimizer step on every process and is counted, never trained on
  (decided on the device where the fused optimizer can, :mod:`pixtok.training.nonfinite`: no step
  waits for the GPU to tell it);
* evaluation with each task's metric every ``eval_every`` steps and at the end;
* ``train.compile``: the model's repeated blocks compiled in place for the training steps
  (:mod:`pixtok.training.compilation`), evaluation eager;
* ``train.ema_decay``: a moving average of the trainable weights (:mod:`pixtok.training.ema`),
  carried by the checkpoints; evaluation and the saved model use it (not with FSDP);
  ``train.ema_eval_raw`` also scores the trained weights at the end (``val_raw``);
* TensorBoard logging through accelerate's trackers; a progress bar on the main process.

With several processes (``accelerate launch``, ``recipes/accelerate/ddp.yaml`` / ``fsdp.yaml``):
* process ``r`` of ``W`` trains on samples ``r*B … r*B+B-1`` of each ``W*B`` global batch
  (:class:`~pixtok.training.sampling.SampleStream`); a micro-batch's processor randomness (object
  order, Pix2Seq noise boxes) is keyed by its first sample, so ``W`` processes at batch ``B`` see
  exactly the batches of one process at batch ``B`` with ``W``-step gradient accumulation (one task);
* the logged training losses are means over processes (each process's loss is a mean over its own
  micro-batch, as DDP's gradient is); ``history`` entries carry ``seconds`` (training time, without
  periodic evaluation and checkpoints) and ``samples`` (``step * global batch``) for throughput;
* evaluation and ``save_pretrained`` run on the main process on a full model: the prepared model
  itself under DDP; under FSDP a full copy kept on the main process (made before sharding) into
  which every process gathers ``accelerator.get_state_dict(model)`` — a collective;
* checkpoints (``save_state``) are written by every process (FSDP: sharded).
* DDP (``train.ddp_find_unused: auto``): before training, one micro-batch of each task finds the
  parameters no task trains, which are frozen, and whether every task trains the same ones, in
  which case DDP runs without ``find_unused_parameters`` (:mod:`pixtok.training.unused_parameters`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from tqdm.auto import tqdm

from accelerate import Accelerator

from ..model.input_checks import check_batch, checked_on_host
from ..tasks.base import Example, Task
from .checkpoint import read_state, resolve_checkpoint, save_checkpoint
from .compilation import compile_options, compile_repeated_blocks, eager, step_begin
from .config import ConfigError, RecipeConfig, TrainSection
from .ema import WeightEMA
from .feature_cache import FeatureCache, check_cacheable
from .nonfinite import NonFiniteGuard, skips_on_device
from .profiling import StepProfiler
from .sampling import SampleStream, TaskMixture, sample_rng
from .unused_parameters import freeze, probe


@dataclass
class TaskData:
    """A task with its training and validation data.

    Attributes:
        task: the :class:`~pixtok.tasks.base.Task`.
        weight: sampling weight in a mixture.
        train: the training dataset (indexable rows).
        val: the validation dataset.
        train_items: ``task.items(train)``.
        val_items: ``task.items(val)``.
        source: the data source name (part of an image's feature-cache key).
    """

    task: Task
    weight: float
    train: Any
    val: Any
    source: str = ""
    train_items: list[tuple[int, int]] = field(default_factory=list)
    val_items: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.train_items:
            self.train_items = self.task.items(self.train)
        if not self.val_items:
            self.val_items = self.task.items(self.val)

    def val_examples(self, limit: int) -> list[Example]:
        """The first ``limit`` validation examples, un-augmented (the same every evaluation)."""
        return [self.task.example(self.val[r], s, None) for r, s in self.val_items[:limit]]


class BatchMaker:
    """Builds micro-batch ``m`` (picklable, so it can run in dataloader workers).

    The processor's batch-level randomness (object order, Pix2Seq noise boxes drawn across the
    batch) comes from a generator keyed by the micro-batch's first global sample index, not by
    ``m``: with one task, ``W`` processes at batch ``B`` then build exactly the micro-batches of one
    process at batch ``B`` with ``W``-step gradient accumulation.
    """

    def __init__(
        self,
        tasks: Sequence[TaskData],
        processor: Any,
        mixture: TaskMixture,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.tasks = tasks
        self.processor = processor
        self.mixture = mixture
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, micro_batch: int, indices: list[int]) -> tuple[int, dict[str, torch.Tensor]]:
        t = self.mixture.task_of(micro_batch)
        data = self.tasks[t]
        examples = []
        for j in indices:
            item, rng = self.mixture.item_of(t, j)
            row, sub = data.train_items[item]
            examples.append(data.task.example(data.train[row], sub, rng))
        batch_rng = sample_rng(self.mixture.seed, indices[0] if indices else micro_batch, stream=4)
        batch = dict(
            data.task.collate(
                examples, self.processor, rng=batch_rng, pad_to_multiple_of=self.pad_to_multiple_of
            )
        )
        batch["_image_keys"] = [(data.source, e.image_id, *getattr(e.image, "size", ())) for e in examples]
        return t, batch


def _host_checked(batch: dict[str, Any], vocab_size: int | None) -> dict[str, Any]:
    """A CPU batch checked as the forward would check it (:func:`~pixtok.model.input_checks.
    check_batch`; the forward then skips its device reads under ``checked_on_host``), without an
    ``attention_mask`` that attends everywhere (T5 then gets no mask to read back and inspect)."""
    if vocab_size is not None:
        check_batch(batch, vocab_size)
    mask = batch.get("attention_mask")
    if torch.is_tensor(mask) and bool(mask.all()):
        batch = {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch


def _probe_batches(
    tasks: Sequence[TaskData], processor: Any, cfg: TrainSection
) -> list[tuple[str, dict[str, Any]]]:
    """Each task's first training micro-batch (``cfg.batch_size`` samples), made with a one-task
    mixture of its own so that the run's mixture and data stream are untouched."""
    batches = []
    for data in tasks:
        mixture = TaskMixture([len(data.train_items)], [1.0], cfg.seed)
        maker = BatchMaker([data], processor, mixture, cfg.pad_to_multiple_of)
        _, batch = maker(0, list(range(cfg.batch_size)))
        batch.pop("_image_keys", None)
        batches.append((data.task.name, batch))
    return batches


def _cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# T5's attention query projections (``train.lr_scales`` key; see TrainSection.lr_scales)
QUERY_LR_PATTERN = r"(SelfAttention|EncDecAttention)\.q\."


def _param_groups(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    lr_scales: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; ``lr_scales`` (regex on the parameter name ->
    factor, first match wins) multiplies a group's learning rate, and so its decoupled decay. Each
    group keeps its factor as ``lr_scale``."""
    rules = [(re.compile(pattern), float(factor)) for pattern, factor in (lr_scales or {}).items()]
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    matched = {pattern.pattern: 0 for pattern, _ in rules}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        for pattern, factor in rules:
            if pattern.search(name):
                scale = factor
                matched[pattern.pattern] += 1
                break
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters: check the freeze policy / LoRA settings")
    unused = [pattern for pattern, count in matched.items() if not count]
    if unused:
        raise ValueError(f"train.lr_scales patterns match no trainable parameter: {unused}")
    return [
        {
            "params": params,
            "lr": learning_rate * scale,
            "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": scale,
        }
        for (scale, decay), params in sorted(
            groups.items(), key=lambda item: (item[0][0] != 1.0, item[0][0], not item[0][1])
        )
    ]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


LOSS_NAMES = (
    "loss",
    "lm_loss",
    "trace_loss",
    "box_loss",
    "mask_loss",
    "grounding_loss",
    "class_map_loss",
    "proposal_loss",
)


@torch.no_grad()
def evaluate(
    model: Any, processor: Any, tasks: Sequence[TaskData], num_val: int, batch_size: int, max_new_tokens: int
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[list[Example], list[dict]]]]:
    """Validation losses (teacher-forced) and each task's metric on its first ``num_val`` examples.

    Returns:
        ``({task: {metric: value}}, {task: (examples, predictions)})`` — the latter for pictures.
    """
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, float]] = {}
    shown: dict[str, tuple[list[Example], list[dict]]] = {}
    for data in tasks:
        examples = data.val_examples(num_val)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        predictions: list[dict] = []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = data.task.collate(chunk, processor).to(model.device)
            out = model(**batch)
            for name in LOSS_NAMES:
                value = getattr(out, name, None)
                if value is not None and torch.isfinite(value):
                    sums[f"val_{name}"] = sums.get(f"val_{name}", 0.0) + float(value) * len(chunk)
                    counts[f"val_{name}"] = counts.get(f"val_{name}", 0) + len(chunk)
            for name, (total, count) in data.task.forward_metrics(batch, out).items():
                sums[name] = sums.get(name, 0.0) + total
                counts[name] = counts.get(name, 0) + count
            predictions += data.task.predict(model, processor, chunk, max_new_tokens=max_new_tokens)
        metrics = {k: sums[k] / counts[k] for k in sums if counts[k]}
        metrics.update(data.task.score(predictions, examples))
        results[data.task.name] = metrics
        shown[data.task.name] = (examples, predictions)
    model.train(was_training)
    return results, shown


def train(recipe: RecipeConfig, model: Any, processor: Any, tasks: Sequence[TaskData]) -> dict[str, Any]:
    """Train ``model`` on ``tasks`` as ``recipe.train`` says; returns the final metrics.

    Writes into ``recipe.train.output_dir``: ``checkpoints/``, TensorBoard logs, the final model
    and processor (``save_pretrained``), ``metrics.json`` and a PNG of validation predictions per task.
    Every process calls this; the main process returns the metrics, the others ``{}``.
    """
    cfg = recipe.train
    out_dir = Path(cfg.output_dir)
    # a micro-batch trains one task's heads: the others' parameters get no gradient in it, so DDP
    # searches for them unless the probe below finds that every task trains the same parameters
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=cfg.ddp_find_unused is not False)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with="tensorboard",
        project_dir=str(out_dir),
        kwargs_handlers=[ddp_kwargs],
    )
    set_seed(cfg.seed)

    start_step, state = 0, {"nan_skipped_steps": 0}
    checkpoint = None
    if recipe.resume_from:
        checkpoint = resolve_checkpoint(recipe.resume_from)
        state = read_state(checkpoint)
        _check_compatible(state, model)
        if bool(state.get("ema", False)) != (cfg.ema_decay is not None):
            raise ConfigError(
                f"checkpoint {checkpoint} was written {'with' if state.get('ema') else 'without'} a weight "
                f"average; resume it with train.ema_decay {'set' if state.get('ema') else 'null'}"
            )
        start_step = int(state["step"])
        # the flag tells how the segment that wrote the checkpoint ended; this run reports its own
        state.pop("stopped_by_time_limit", None)
        if start_step >= cfg.max_steps:
            raise ConfigError(f"checkpoint {checkpoint} is at step {start_step} >= max_steps {cfg.max_steps}")

    cache = None
    if cfg.cache_features:
        check_cacheable(model, cfg.augment)
        cache = FeatureCache(model, cfg.cache_max_images)
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    # what a checkpoint records of the model, taken before FSDP turns the parameters into shards
    identity = {
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "model_signature": _signature(model),
    }
    # FSDP shards the prepared model in place, so the main process keeps a full copy (on the CPU
    # between uses) to evaluate and save; every other setup uses the prepared model itself.
    sharded = accelerator.distributed_type == DistributedType.FSDP
    full_copy = copy.deepcopy(model).cpu() if sharded and accelerator.is_main_process else None
    if sharded:
        _merge_tied_embeddings(model)
    ddp = accelerator.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    probed = None
    if ddp and cfg.ddp_find_unused == "auto":
        # on the eager model, before compiling; every process probes the same micro-batches, so
        # every process takes the same decision
        probed = probe(
            model.to(accelerator.device),
            _probe_batches(tasks, processor, cfg),
            accelerator.device,
            accelerator.autocast,
            LOSS_NAMES,
        )
        ddp_kwargs.find_unused_parameters = not probed.static
    if ddp:
        why = probed.verdict if probed is not None else "train.ddp_find_unused"
        accelerator.print(f"DDP find_unused_parameters={ddp_kwargs.find_unused_parameters}: {why}")
    compiling: dict[str, str] = {}
    if cfg.compile:
        compiling = compile_options(cfg.compile)
        if compiling.get("mode") == "reduce-overhead" and accelerator.num_processes > 1:
            # CUDA-graph trees are tried here on one process only: several processes compile without them
            accelerator.print(
                "train.compile: reduce-overhead runs on one process; compiling without CUDA graphs"
            )
            compiling = {}
        compiled = compile_repeated_blocks(model, **compiling)
        how = ", ".join(f"{k} {v}" for k, v in compiling.items()) or "inductor"
        accelerator.print(
            f"compiled {compiled} repeated blocks and loss regions in place (torch.compile: {how})"
        )
    groups = _param_groups(model, cfg.learning_rate, cfg.weight_decay, cfg.lr_scales)
    if probed is not None:
        # after the groups are built: they, and so the optimizer's checkpoints, stay those of any
        # other setting (a frozen parameter in a group never has a gradient, which AdamW skips)
        accelerator.print(freeze(model, probed.unused))
    # fused: one kernel per step over all tensors, where the default (foreach) issues several ops per
    # group from the host, which leave a compiled step's GPU idle (transformers' Trainer default too)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas), fused=True)
    scheduler = _cosine_schedule(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    ema = None
    if cfg.ema_decay is not None:
        if sharded:
            raise ConfigError("train.ema_decay is not supported with FSDP (the parameters are shards)")
        trainable = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]
        ema = WeightEMA(trainable, cfg.ema_decay)
        accelerator.register_for_checkpointing(ema)  # after the scheduler: checkpoints keep its slot
    state["ema"] = ema is not None
    # a non-finite loss's step skipped by the fused optimizer on the device, no read per step
    # (pixtok.training.nonfinite); with fp16's GradScaler (which sets found_inf itself) or FSDP's
    # sharded parameters the loop reads the loss's finiteness on the host instead
    guard = (
        NonFiniteGuard(optimizer, accelerator.device)
        if skips_on_device(optimizer) and accelerator.scaler is None and not sharded
        else None
    )
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")

    mixture = TaskMixture([len(t.train_items) for t in tasks], [t.weight for t in tasks], cfg.seed)
    stream = SampleStream(
        BatchMaker(tasks, processor, mixture, cfg.pad_to_multiple_of),
        cfg.batch_size,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        start=start_step * cfg.gradient_accumulation_steps,
    )
    # The loader gets its own generator: creating an iterator must not draw from the global RNG,
    # or a resumed run's dropout stream would be shifted by one draw.
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=accelerator.device.type == "cuda",  # page-locked batches: asynchronous copies
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    global_batch = cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("pixtok", config=_flat(recipe.to_dict()))
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process and hasattr(unwrapped, "print_trainable_parameters"):
        unwrapped.print_trainable_parameters()  # peft-style "trainable params: … || trainable%: …"

    def main_model() -> Any:
        """The full model the main process evaluates and saves (``None`` elsewhere); every process
        must call it (under FSDP it gathers the shards)."""
        if not sharded:
            return unwrapped if accelerator.is_main_process else None
        full = accelerator.get_state_dict(model)  # collective; full tensors on the main process only
        if not accelerator.is_main_process:
            return None
        full_copy.load_state_dict(full)
        return full_copy.to(accelerator.device)

    def run_evaluation(target: Any) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        # compiled blocks run eagerly here: the decode loop's shapes change every step
        with (
            accelerator.autocast() if sharded else contextlib.nullcontext(),
            eager(),
        ):  # DDP: the forward is wrapped
            return evaluate(
                target,
                processor,
                tasks,
                recipe.data.num_val,
                cfg.eval_batch_size or cfg.batch_size,
                cfg.max_new_tokens,
            )

    model.train()
    step, bad_step = start_step, False
    # per loss name: [sum, count] over the micro-batches that reported it (summed over processes);
    # kept on the accelerator so that recording a loss does not wait for the GPU
    running = torch.zeros(2, len(LOSS_NAMES), dtype=torch.float64, device=accelerator.device)
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    # a resumed run continues its clock and its loss history: the time limit bounds the whole run,
    # and the result's history starts at step 1 whichever segment wrote it
    started = time.time() - float(state.get("train_seconds", 0.0))
    paused = 0.0  # seconds of periodic evaluation and checkpointing, not training

    def trained() -> float:
        """Training seconds of the whole run so far (earlier segments included, pauses not)."""
        return time.time() - started - paused

    history: list[dict[str, Any]] = list(state.get("history", []))

    def count_skipped() -> None:
        """Move the device's count of skipped steps into ``state`` (a read: at logs, saves and the end)."""
        if guard is None:
            return
        skipped = int(guard.skipped)
        if skipped:
            guard.skipped.zero_()
            state["nan_skipped_steps"] = state.get("nan_skipped_steps", 0) + skipped
            accelerator.print(
                f"step {step}: {skipped} non-finite loss(es) since the last log, optimizer step(s) "
                f"skipped ({state['nan_skipped_steps']} so far)"
            )

    profiler = None
    if cfg.profile_steps is not None and accelerator.is_main_process:
        profiler = StepProfiler(*cfg.profile_steps, out_dir / "profile", accelerator.device)
        profiler.after_step(start_step)
    vocab = getattr(getattr(unwrapped, "config", None), "vocab", None)
    for task_index, batch in loader:
        keys = batch.pop("_image_keys", None)
        batch = _host_checked(batch, vocab.size if vocab is not None else None)
        batch = {
            k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        if cache is not None:
            batch = cache.apply(batch, keys)
        with accelerator.accumulate(model):
            step_begin(compiling)
            with checked_on_host():  # the batch was checked on the CPU (_host_checked)
                out = model(**batch)
            loss = out.loss
            finite = (
                torch.isfinite(loss.detach()).float()
                if loss is not None
                else torch.zeros((), device=accelerator.device)
            )
            finite = (
                accelerator.reduce(finite.reshape(1), reduction="mean")
                if accelerator.num_processes > 1
                else finite
            )
            taken = None  # where the guard decides: the device's "this micro-batch's losses are finite"
            if guard is not None and loss is not None:
                # the backward runs whatever the loss and the fused optimizer drops the step of a
                # non-finite one (NonFiniteGuard); nothing here waits for the GPU
                early, ok = False, True
                taken = finite.min() == 1.0
                guard.observe(taken)
            else:
                # One process reads the loss's finiteness once the backward is queued, so the GPU is
                # not left idle between forward and backward (a non-finite loss's gradients are
                # dropped below with the skipped step); several read it first, for all to skip the
                # backward.
                early = accelerator.num_processes > 1 or loss is None
                ok = float(finite.min()) == 1.0 if early else True
            if ok:
                if probed is not None:
                    probed.check(task_index, out, step + 1)
                accelerator.backward(loss)
                ok = ok if early or taken is not None else float(finite) == 1.0
            if ok:
                for i, name in enumerate(LOSS_NAMES):
                    value = getattr(out, name, None)
                    if value is None:
                        continue
                    value = value.detach().to(running.dtype)
                    if taken is not None:  # a skipped micro-batch adds nothing (its loss may be NaN)
                        value = torch.where(taken, value, torch.zeros_like(value))
                    running[0, i] += value
                    running[1, i] += 1 if taken is None else taken.to(running.dtype)
            else:
                bad_step = True
            if accelerator.sync_gradients:
                if bad_step:
                    state["nan_skipped_steps"] = state.get("nan_skipped_steps", 0) + 1
                    accelerator.print(
                        f"step {step + 1}: non-finite loss, optimizer step skipped ({state['nan_skipped_steps']} so far)"
                    )
                    if guard is not None:  # a micro-batch without a loss: no backward, no step
                        guard.discard()
                else:
                    if cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    if guard is not None:
                        guard.before_step()
                    optimizer.step()
                    if ema is not None:
                        ema.update(guard.taken if guard is not None else None)
                    if guard is not None:
                        guard.after_step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                bad_step = False
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if profiler is not None and (profiled := profiler.after_step(step)):
            accelerator.print(f"profile of {profiled}")
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            totals = running
            if accelerator.num_processes > 1:  # every process logs at this step: sum over processes
                totals = accelerator.reduce(running.clone(), reduction="sum")
            totals = totals.cpu()
            count_skipped()
            logs = {
                f"train/{name}": float(totals[0, i] / totals[1, i])
                for i, name in enumerate(LOSS_NAMES)
                if totals[1, i] > 0
            }
            logs["train/lr"] = scheduler.get_last_lr()[0] / groups[0]["lr_scale"]
            logs["train/task"] = task_index
            accelerator.log(logs, step=step)
            history.append(
                {
                    "step": step,
                    **{k: round(float(v), 6) for k, v in logs.items()},
                    "seconds": round(trained(), 3),
                    "samples": step * global_batch,
                }
            )
            bar.set_postfix(loss=f"{logs.get('train/loss', float('nan')):.3f}")
            running.zero_()
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            pause = time.time()
            if sharded:
                _complete_adamw_state(optimizer)
            count_skipped()
            state.update(train_seconds=round(trained(), 3), history=history)
            save_checkpoint(accelerator, out_dir, step, _state(state, identity), keep=cfg.keep_checkpoints)
            paused += time.time() - pause
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            pause = time.time()
            target = main_model()
            if target is not None:
                with ema.applied() if ema is not None else contextlib.nullcontext():
                    metrics, _ = run_evaluation(target)
                accelerator.log(
                    {f"val/{t}/{k}": v for t, m in metrics.items() for k, v in m.items() if v is not None},
                    step=step,
                )
                if target is full_copy:
                    full_copy.cpu()  # give the accelerator's memory back to training
            paused += time.time() - pause
        if step >= cfg.max_steps:
            break
        if cfg.time_limit_minutes is not None and step % 10 == 0:
            over = torch.tensor(
                [float(trained() > 60.0 * cfg.time_limit_minutes)],
                device=accelerator.device,
            )
            if accelerator.num_processes > 1:
                over = accelerator.reduce(over, reduction="sum")  # every process stops at the same step
            if float(over) > 0:
                state["stopped_by_time_limit"] = True
                accelerator.print(
                    f"step {step}: time limit of {cfg.time_limit_minutes} min reached, stopping"
                )
                break
    bar.close()
    if profiler is not None:
        profiler.close()
    train_seconds = trained()
    count_skipped()
    state.update(train_seconds=round(train_seconds, 3), history=history)

    if sharded:
        _complete_adamw_state(optimizer)
    save_checkpoint(accelerator, out_dir, step, _state(state, identity), keep=cfg.keep_checkpoints)
    target = main_model()
    raw_metrics = None
    if ema is not None:  # never sharded: target is the live model (or None off the main process)
        if target is not None and cfg.ema_eval_raw:
            raw_metrics, _ = run_evaluation(target)  # the trained weights, before the average
        # the checkpoint above keeps the trained weights (and the average) to resume from; what is
        # evaluated, saved and left in the model from here on is the average
        ema.copy_to_params()
    result: dict[str, Any] = {}
    if target is not None:
        accelerator.print(
            f"step {step}: trained for {train_seconds:.0f} s; evaluating {recipe.data.num_val} val examples per task"
        )
        eval_started = time.time()
        metrics, shown = run_evaluation(target)
        accelerator.print(f"evaluation took {time.time() - eval_started:.0f} s")
        accelerator.log(
            {f"val/{t}/{k}": v for t, m in metrics.items() for k, v in m.items() if v is not None}, step=step
        )
        target.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        pictures, records = {}, {}
        for data in tasks:
            examples, predictions = shown[data.task.name]
            path = out_dir / f"val_{data.task.name}.png"
            if data.task.draw(examples[:4], predictions[:4], path):
                pictures[data.task.name] = path.name
            rows = data.task.records(predictions, examples)
            if rows:
                path = out_dir / f"val_{data.task.name}_records.jsonl"
                path.write_text("".join(json.dumps(row, default=_jsonable) + "\n" for row in rows))
                records[data.task.name] = path.name
        result = {
            "step": step,
            "val": metrics,
            "nan_skipped_steps": state.get("nan_skipped_steps", 0),
            "stopped_by_time_limit": state.get("stopped_by_time_limit", False),
            "train_seconds": round(train_seconds, 2),
            "num_processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type.value),
            "mixed_precision": str(accelerator.mixed_precision),
            "batch_size": cfg.batch_size,
            "global_batch_size": global_batch,
            "history": history,
            "pictures": pictures,
            "records": records,
        }
        if raw_metrics is not None:
            result["val_raw"] = raw_metrics
        if cache is not None:
            result["feature_cache"] = cache.summary()
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _merge_tied_embeddings(model: torch.nn.Module) -> list[str]:
    """Replace each twin of the input embedding (same class and settings, holding the very same
    weight) by the input embedding module itself; returns the replaced module names.

    transformers' T5 ties ``shared``, ``encoder.embed_tokens``, ``decoder.embed_tokens`` and
    ``lm_head`` to one parameter through four modules. accelerate's FSDP2 wrapping groups the input
    and output embeddings together and leaves the two ``embed_tokens`` twins to the root group, so
    the parameter would belong to two FSDP groups (torch >= 2.13 refuses; older torch silently
    unties it). As one module object the twins are the input embedding's group; the forward is
    unchanged and ``state_dict`` keeps every key.
    """
    get = getattr(model, "get_input_embeddings", None)
    embed = get() if callable(get) else None
    weight = getattr(embed, "weight", None)
    if not isinstance(weight, torch.nn.Parameter):
        return []
    merged = []
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if (
            module is embed
            or type(module) is not type(embed)
            or getattr(module, "weight", None) is not weight
            or module.extra_repr() != embed.extra_repr()
            or len(list(module.parameters())) != 1
            or len(list(module.buffers())) != 0
        ):
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, embed)
        merged.append(name)
    return merged


def _complete_adamw_state(optimizer: Any) -> int:
    """Give each trainable parameter that has never had a gradient the state AdamW would create at
    its first step (step 0, zero moments); returns how many got one.

    FSDP saves the optimizer with torch.distributed.checkpoint, whose loader expects a state for
    every parameter (it initialises them all) and fails on a missing one — and a micro-batch trains
    one task, so other tasks' heads may have none yet. AdamW skips parameters without a gradient and
    starts from exactly this state, so training is unchanged.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    added = 0
    for group in inner.param_groups:
        for p in group["params"]:
            if not p.requires_grad or inner.state.get(p):
                continue
            on_device = group.get("fused") or group.get("capturable")
            step = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
            state = {"step": step, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p)
            inner.state[p] = state
            added += 1
    return added


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


def _state(state: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    return {**state, **identity}


def _signature(model: Any) -> dict[str, list[int]]:
    """Parameter shapes by name: what a checkpoint must match to be loadable into ``model``."""
    return {name: list(p.shape) for name, p in model.state_dict().items()}


def _check_compatible(state: dict[str, Any], model: Any) -> None:
    saved = state.get("model_signature")
    if not saved:
        return
    current = _signature(model)
    missing = sorted(set(saved) - set(current))
    extra = sorted(set(current) - set(saved))
    shape = sorted(k for k in set(saved) & set(current) if saved[k] != current[k])
    if missing or extra or shape:
        details = []
        if shape:
            details.append(
                f"{len(shape)} shape mismatch(es), e.g. {shape[0]}: checkpoint {saved[shape[0]]} vs model {current[shape[0]]}"
            )
        if missing:
            details.append(f"{len(missing)} tensor(s) the model lacks, e.g. {missing[0]}")
        if extra:
            details.append(f"{len(extra)} tensor(s) the checkpoint lacks, e.g. {extra[0]}")
        raise ConfigError(
            "the checkpoint was written by a different model (another preset or config?): "
            + "; ".join(details)
        )


__all__ = ["LOSS_NAMES", "BatchMaker", "TaskData", "evaluate", "train"]
