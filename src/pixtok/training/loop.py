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
  the counter, RNG states are in the checkpoint);
* a non-finite loss skips its optimizer step on every process and is counted, never trained on;
* evaluation with each task's metric every ``eval_every`` steps and at the end;
* TensorBoard logging through accelerate's trackers; a progress bar on the main process.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from accelerate import Accelerator

from ..tasks.base import Example, Task
from .checkpoint import read_state, resolve_checkpoint, save_checkpoint
from .config import ConfigError, RecipeConfig
from .feature_cache import FeatureCache, check_cacheable
from .sampling import SampleStream, TaskMixture, sample_rng


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
    """Builds micro-batch ``m`` (picklable, so it can run in dataloader workers)."""

    def __init__(self, tasks: Sequence[TaskData], processor: Any, mixture: TaskMixture) -> None:
        self.tasks = tasks
        self.processor = processor
        self.mixture = mixture

    def __call__(self, micro_batch: int, indices: list[int]) -> tuple[int, dict[str, torch.Tensor]]:
        t = self.mixture.task_of(micro_batch)
        data = self.tasks[t]
        examples = []
        for j in indices:
            item, rng = self.mixture.item_of(t, j)
            row, sub = data.train_items[item]
            examples.append(data.task.example(data.train[row], sub, rng))
        batch_rng = sample_rng(self.mixture.seed, micro_batch, stream=4)
        batch = dict(data.task.collate(examples, self.processor, rng=batch_rng))
        batch["_image_keys"] = [(data.source, e.image_id, *getattr(e.image, "size", ())) for e in examples]
        return t, batch


def _cosine_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters: check the freeze policy / LoRA settings")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


LOSS_NAMES = ("loss", "lm_loss", "trace_loss", "box_loss", "mask_loss", "proposal_loss")


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
    """
    cfg = recipe.train
    out_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with="tensorboard",
        project_dir=str(out_dir),
    )
    set_seed(cfg.seed)

    start_step, state = 0, {"nan_skipped_steps": 0}
    checkpoint = None
    if recipe.resume_from:
        checkpoint = resolve_checkpoint(recipe.resume_from)
        state = read_state(checkpoint)
        _check_compatible(state, model)
        start_step = int(state["step"])
        if start_step >= cfg.max_steps:
            raise ConfigError(f"checkpoint {checkpoint} is at step {start_step} >= max_steps {cfg.max_steps}")

    cache = None
    if cfg.cache_features:
        check_cacheable(model, cfg.augment)
        cache = FeatureCache(model, cfg.cache_max_images)
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=tuple(cfg.betas)
    )
    scheduler = _cosine_schedule(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")

    mixture = TaskMixture([len(t.train_items) for t in tasks], [t.weight for t in tasks], cfg.seed)
    stream = SampleStream(
        BatchMaker(tasks, processor, mixture),
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
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("pixtok", config=_flat(recipe.to_dict()))
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process and hasattr(unwrapped, "print_trainable_parameters"):
        unwrapped.print_trainable_parameters()  # peft-style "trainable params: … || trainable%: …"

    model.train()
    step, bad_step = start_step, False
    running: dict[str, float] = {}
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    started = time.time()
    history: list[dict[str, Any]] = []
    for task_index, batch in loader:
        keys = batch.pop("_image_keys", None)
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if cache is not None:
            batch = cache.apply(batch, keys)
        with accelerator.accumulate(model):
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
            if float(finite.min()) == 1.0:
                accelerator.backward(loss)
                for name in LOSS_NAMES:
                    value = getattr(out, name, None)
                    if value is not None:
                        running[name] = running.get(name, 0.0) + float(value.detach())
                running["_n"] = running.get("_n", 0.0) + 1
            else:
                bad_step = True
            if accelerator.sync_gradients:
                if bad_step:
                    state["nan_skipped_steps"] = state.get("nan_skipped_steps", 0) + 1
                    accelerator.print(
                        f"step {step + 1}: non-finite loss, optimizer step skipped ({state['nan_skipped_steps']} so far)"
                    )
                else:
                    if cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                bad_step = False
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            n = max(running.pop("_n", 1.0), 1.0)
            logs = {f"train/{k}": v / n for k, v in running.items()}
            logs["train/lr"] = scheduler.get_last_lr()[0]
            logs["train/task"] = task_index
            accelerator.log(logs, step=step)
            history.append({"step": step, **{k: round(float(v), 6) for k, v in logs.items()}})
            bar.set_postfix(loss=f"{logs.get('train/loss', float('nan')):.3f}")
            running = {}
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            save_checkpoint(accelerator, out_dir, step, _state(state, unwrapped), keep=cfg.keep_checkpoints)
        if (
            cfg.eval_every
            and step % cfg.eval_every == 0
            and step < cfg.max_steps
            and accelerator.is_main_process
        ):
            metrics, _ = evaluate(
                unwrapped, processor, tasks, recipe.data.num_val, cfg.batch_size, cfg.max_new_tokens
            )
            accelerator.log(
                {f"val/{t}/{k}": v for t, m in metrics.items() for k, v in m.items() if v is not None},
                step=step,
            )
        if step >= cfg.max_steps:
            break
        if cfg.time_limit_minutes is not None and step % 10 == 0:
            over = torch.tensor([float(time.time() - started > 60.0 * cfg.time_limit_minutes)], device=accelerator.device)
            if accelerator.num_processes > 1:
                over = accelerator.reduce(over, reduction="sum")  # every process stops at the same step
            if float(over) > 0:
                state["stopped_by_time_limit"] = True
                accelerator.print(f"step {step}: time limit of {cfg.time_limit_minutes} min reached, stopping")
                break
    bar.close()
    train_seconds = time.time() - started

    save_checkpoint(accelerator, out_dir, step, _state(state, unwrapped), keep=cfg.keep_checkpoints)
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        metrics, shown = evaluate(
            unwrapped, processor, tasks, recipe.data.num_val, cfg.batch_size, cfg.max_new_tokens
        )
        accelerator.log(
            {f"val/{t}/{k}": v for t, m in metrics.items() for k, v in m.items() if v is not None}, step=step
        )
        unwrapped.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        pictures = {}
        for data in tasks:
            examples, predictions = shown[data.task.name]
            path = out_dir / f"val_{data.task.name}.png"
            if data.task.draw(examples[:4], predictions[:4], path):
                pictures[data.task.name] = path.name
        result = {
            "step": step,
            "val": metrics,
            "nan_skipped_steps": state.get("nan_skipped_steps", 0),
            "stopped_by_time_limit": state.get("stopped_by_time_limit", False),
            "train_seconds": round(train_seconds, 2),
            "history": history,
            "pictures": pictures,
        }
        if cache is not None:
            result["feature_cache"] = cache.summary()
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


def _state(state: dict[str, Any], model: Any) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        **state,
        "model_type": getattr(config, "model_type", None),
        "model_signature": _signature(model),
    }


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
