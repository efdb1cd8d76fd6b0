"""``pixtok`` command line: predict, evaluate, synth, convert-sam.

Every subcommand imports what it needs when it runs (``pixtok --help`` loads no model code). Errors
a user can fix (a missing file, an unknown task, a model without the task's head) print one line
``pixtok <command>: error: …`` and exit with status 2; a bad image among many is reported,
skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .model.vocab import TASKS

TASK_CHOICES: tuple[str, ...] = TASKS
"""``--task`` values: the model's task names (``pixtok.model.vocab`` is loaded by ``import pixtok``)."""

EXIT_USAGE = 2
"""Exit status for a user error (bad path, unknown task, model without the task's head)."""


class CliError(Exception):
    """A user-facing error: its message is printed as one line, the process exits non-zero."""


# --- model loading -----------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model, its processor and what it can do.

    Attributes:
        model: ``PixtokForConditionalGeneration`` or ``PixtokForPanopticSegmentation`` (eval mode).
        processor: ``PixtokProcessor``.
        kind: ``"pixtok"`` or ``"panoptic"``.
        name: the ``--model`` value.
        id2label: class names by label id (may be empty).
        random_weights: built from a preset (untrained) rather than loaded.
    """

    model: Any
    processor: Any
    kind: str
    name: str
    id2label: dict[int, str] = field(default_factory=dict)
    random_weights: bool = False

    def check_task(self, task: str) -> None:
        """Raise :class:`CliError` when this model has no head for ``task``."""
        if task not in TASK_CHOICES:
            raise CliError(f"unknown task {task!r}; expected one of {', '.join(TASK_CHOICES)}")
        if task == "panoptic" and self.kind != "panoptic":
            raise CliError(
                f"model {self.name} has no panoptic head; panoptic needs a PixtokForPanopticSegmentation "
                "folder or preset (e.g. --model panoptic-tiny)"
            )
        if task != "panoptic" and self.kind == "panoptic":
            raise CliError(f"model {self.name} is a panoptic model; it cannot do {task}")
        if task == "detection" and not (self.processor.class_names or self.processor.open_vocabulary):
            raise CliError(
                f"model {self.name} has no class list (id2label) and is not open-vocabulary: no detection head"
            )


PANOPTIC_PRESET_PREFIX = "panoptic-"
"""``--model panoptic-<preset>`` builds an untrained panoptic model of that preset."""


def load_model(spec: str, device: str = "cpu", seed: int = 0) -> LoadedModel:
    """Load ``spec``: a saved model folder (pixtok or panoptic), a preset name, or ``panoptic-<preset>``.

    A preset builds an untrained model (random weights, seeded) — useful to try the pipeline.

    Raises:
        CliError: ``spec`` is neither an existing folder nor a known preset.
    """
    path = Path(spec)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CliError(f"model folder {path} has no config.json (expected a save_pretrained folder)")
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
        if model_type == "pixtok_panoptic":
            from pixtok.model.modeling_pixtok_panoptic import PixtokForPanopticSegmentation as cls

            kind = "panoptic"
        else:
            from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration as cls

            kind = "pixtok"

        model = cls.from_pretrained(path)
        processor = _processor_for(path, model, kind)
        loaded = LoadedModel(model, processor, kind, spec, _id2label(model.config))
    else:
        loaded = _from_preset(spec, seed)
    loaded.model.to(device).eval()
    return loaded


def _processor_for(path: Path, model: Any, kind: str) -> Any:
    """The folder's saved processor; for a panoptic folder without one, the processor of the pixtok
    preset whose tower input sizes match the model's (panoptic only needs the image geometry)."""
    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.presets import PRESETS
    from pixtok.model.processing_pixtok import PixtokProcessor

    if (path / "processor_config.json").is_file() or kind == "pixtok":
        return PixtokProcessor.from_pretrained(path)
    sizes = (model.config.vision_config.image_size, model.config.eva_config.img_size)
    for name in PRESETS:
        config = PixtokConfig.from_preset(name)
        if (config.vision_config.image_size, config.eva_config.img_size) == sizes:
            return PixtokProcessor.from_config(config)
    raise CliError(
        f"panoptic model folder {path} has no processor_config.json and no preset has its input sizes "
        f"{sizes}; save the processor into the folder (processor.save_pretrained)"
    )


def _id2label(config: Any) -> dict[int, str]:
    return {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}


def _from_preset(spec: str, seed: int) -> LoadedModel:
    import torch

    from pixtok.model.presets import PRESETS
    from pixtok.model.processing_pixtok import PixtokProcessor

    panoptic = spec.startswith(PANOPTIC_PRESET_PREFIX)
    preset = spec[len(PANOPTIC_PRESET_PREFIX) :] if panoptic else spec
    if preset not in PRESETS:
        raise CliError(
            f"model {spec!r} is neither a folder nor a preset; presets: {', '.join(PRESETS)} "
            f"(or {PANOPTIC_PRESET_PREFIX}<preset> for the panoptic model)"
        )
    torch.manual_seed(seed)
    if panoptic:
        from pixtok.model.configuration_pixtok_panoptic import PixtokPanopticConfig
        from pixtok.model.modeling_pixtok_panoptic import PixtokForPanopticSegmentation

        try:
            config = PixtokPanopticConfig.from_preset(preset)
        except ValueError as error:
            raise CliError(str(error)) from None
        model = PixtokForPanopticSegmentation(config)
        return LoadedModel(
            model, PixtokProcessor.from_preset(preset), "panoptic", spec, _id2label(config), True
        )
    from pixtok.model.configuration_pixtok import PixtokConfig
    from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration

    config = PixtokConfig.from_preset(preset)
    model = PixtokForConditionalGeneration(config)
    return LoadedModel(model, PixtokProcessor.from_config(config), "pixtok", spec, _id2label(config), True)


# --- prediction --------------------------------------------------------------------------------
class ModelPredictor:
    """Runs a loaded model on images with prompts and post-processes (the evaluation runner's
    ``Predictor``).

    Args:
        loaded: the model.
        max_new_tokens: decoding budget (``None``: the task's default).
        threshold: detection score threshold.
        seed: sampling seed.
    """

    def __init__(
        self, loaded: LoadedModel, max_new_tokens: int | None = None, threshold: float = 0.0, seed: int = 0
    ) -> None:
        self.loaded = loaded
        self.max_new_tokens = max_new_tokens
        self.threshold = threshold
        self.seed = seed
        self.last_inputs: Any = None
        self.last_generation: Any = None

    def _device(self) -> Any:
        return next(self.loaded.model.parameters()).device

    def _inputs(self, task: str, images: Sequence[Any], prompts: Sequence[Mapping[str, Any]]) -> Any:
        prompts = list(prompts) or [{}] * len(images)
        texts = [p.get("text") for p in prompts]
        boxes = [p.get("box") for p in prompts]
        points = [p.get("point") for p in prompts]
        batch = self.loaded.processor(
            images=list(images),
            task=task,
            text=texts if any(t is not None for t in texts) else None,
            boxes=boxes if any(b is not None for b in boxes) else None,
            points=points if any(p is not None for p in points) else None,
        )
        return self._on_model(batch)

    def _on_model(self, batch: Any) -> Any:
        """Move a processor batch to the model's device; images in the model's dtype (bf16/fp16)."""
        batch = batch.to(self._device())
        dtype = getattr(self.loaded.model, "dtype", None)
        for key in ("pixel_values", "eva_pixel_values"):
            if dtype is not None and key in batch and batch[key].dtype != dtype:
                batch[key] = batch[key].to(dtype)
        return batch

    def predict(self, task: str, images: Sequence[Any], prompts: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Post-processed outputs, one per image (``post_process_*`` formats, pixels)."""
        import torch

        self.loaded.check_task(task)
        proc = self.loaded.processor
        inputs = self._inputs(task, images, prompts)
        generator = torch.Generator(device=self._device()).manual_seed(self.seed)
        with torch.no_grad():
            if task == "panoptic":
                generated = self.loaded.model.generate(**inputs, generator=generator)
                out = proc.post_process_panoptic_segmentation(generated)
            else:
                options = {} if self.max_new_tokens is None else {"max_new_tokens": self.max_new_tokens}
                generated = self.loaded.model.generate(**inputs, generator=generator, **options)
                if task == "detection":
                    out = proc.post_process_object_detection(generated, threshold=self.threshold)
                elif task in ("caption", "region_caption"):
                    out = proc.post_process_caption(generated)
                elif task == "referring":
                    out = proc.post_process_referring(generated)
                else:
                    out = proc.post_process_dense_caption(generated)
        self.last_inputs, self.last_generation = inputs, generated
        return list(out)

    def trace(self, images: Sequence[Any], words: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Points the model writes for given captions (teacher forced), per image (W, 2) xy pixels."""
        import torch

        self.loaded.check_task("caption")
        results = []
        for image, word_list in zip(images, words):
            word_list = [str(w) for w in word_list]
            h, w = (image.height, image.width) if hasattr(image, "height") else np.asarray(image).shape[:2]
            # tag word k with a distinct point so each token's target says which word it belongs to
            tags = np.stack(
                [np.arange(len(word_list)) % w + 0.5, np.arange(len(word_list)) // w + 0.5], axis=1
            )
            batch = self.loaded.processor(
                images=[image], task="caption", targets=[{"words": word_list, "points": tags}]
            )
            batch = self._on_model(batch)
            with torch.no_grad():
                out = self.loaded.model(**batch)
            scale = float(max(h, w))
            target = batch["point_targets"][0].float().cpu().numpy() * scale
            valid = batch["point_mask"][0].cpu().numpy().astype(bool)
            predicted = out.points[0].float().cpu().numpy() * scale
            index = np.round(target[:, 0] - 0.5).astype(int) + w * np.round(target[:, 1] - 0.5).astype(int)
            word_points = np.full((len(word_list), 2), np.nan)
            for k in range(len(word_list)):
                members = valid & (index == k)
                if members.any():
                    word_points[k] = predicted[members].mean(axis=0)
            results.append(word_points)
        return results


def prediction_to_json(
    task: str,
    prediction: Mapping[str, Any],
    image_id: Any,
    id2label: Mapping[int, str] | None = None,
    category_ids: Sequence[int] | None = None,
) -> Any:
    """A JSON-ready form of one image's prediction.

    Detection: the COCO results format (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``
    plus ``"label"`` names); ``category_id`` is ``category_ids[label]`` when given (a COCO
    annotation file's categories in label order), else the label id (-1: an open-vocabulary name
    outside the class list). Referring masks and panoptic maps
    are run-length encoded (COCO RLE); other tasks keep their dict with arrays as lists.
    """
    from pixtok.evaluation.coco import encode_mask

    if task == "detection":
        boxes = np.asarray(_plain(prediction.get("boxes", [])), dtype=np.float64).reshape(-1, 4)
        scores = _plain(prediction.get("scores", [1.0] * len(boxes)))
        labels = [int(v) for v in _plain(prediction.get("labels", [-1] * len(boxes)))]
        names = prediction.get("names")  # open vocabulary: the generated class text
        try:
            image_key: Any = int(image_id)
        except (TypeError, ValueError):
            image_key = str(image_id)
        results = []
        for k, ((x0, y0, x1, y1), score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
            if category_ids is not None:
                category = int(category_ids[label]) if 0 <= label < len(category_ids) else -1
            else:
                category = label
            result = {
                "image_id": image_key,
                "category_id": category,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
            }
            if names is not None:
                result["label"] = str(names[k])
            elif id2label:
                result["label"] = id2label.get(label, str(label))
            results.append(result)
        return results
    out: dict[str, Any] = {"image_id": str(image_id)}
    for key, value in prediction.items():
        if key == "mask":
            out[key] = None if value is None else encode_mask(_array(value).astype(bool))
        elif key == "segmentation":
            out["segmentation_rle"] = {
                str(i): encode_mask(_array(value) == i) for i in np.unique(_array(value)) if i > 0
            }
        else:
            out[key] = _plain(value)
    return out


def _array(value: Any) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)


def _plain(value: Any) -> Any:
    """Tensors / arrays / numpy scalars → JSON-ready lists and numbers (NaN → null)."""
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
        return _nan_to_none(_array(value).tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _nan_to_none(value.item())
    return value


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


# --- subcommands -------------------------------------------------------------------------------
def _read_image(path: Path) -> Any:
    from pixtok.data import load_image

    return load_image(path)


def _prompt_from_args(args: argparse.Namespace) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    if args.text:
        prompt["text"] = args.text
    if args.box:
        prompt["box"] = list(args.box)
    if args.point:
        prompt["point"] = list(args.point)
    if args.task == "referring" and "text" not in prompt:
        raise CliError("--task referring needs --text 'the referring expression'")
    if args.task == "region_caption" and not ({"box", "point"} & set(prompt)):
        raise CliError("--task region_caption needs --box X0 Y0 X1 Y1 or --point X Y (pixels)")
    return prompt


def _category_ids(path: str | None) -> list[int] | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise CliError(f"COCO categories file not found: {file}")
    data = json.loads(file.read_text())
    categories = data["categories"] if isinstance(data, dict) else data
    return sorted(int(c["id"]) for c in categories)


def cmd_predict(args: argparse.Namespace) -> int:
    """``pixtok predict``: one JSON and one PNG per image under ``--out``."""
    from pixtok import visualize

    if args.task not in TASK_CHOICES:
        raise CliError(f"unknown task {args.task!r}; expected one of {', '.join(TASK_CHOICES)}")
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing and len(missing) == len(paths):
        raise CliError(f"image file not found: {', '.join(missing)}")
    prompt = _prompt_from_args(args)
    category_ids = _category_ids(args.coco_categories)
    loaded = load_model(args.model, device=args.device, seed=args.seed)
    loaded.check_task(args.task)
    if loaded.random_weights:
        print(
            f"note: {args.model} is a preset with random weights (untrained); outputs are noise",
            file=sys.stderr,
        )
    predictor = ModelPredictor(
        loaded, max_new_tokens=args.max_new_tokens, threshold=args.threshold, seed=args.seed
    )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, skipped = 0, []
    for path in paths:
        try:
            image = _read_image(path)
        except (OSError, ValueError) as error:
            skipped.append(f"{path}: {error}")
            print(f"skipping {path}: {error}", file=sys.stderr)
            continue
        try:
            prediction = predictor.predict(args.task, [image], [prompt])[0]
        except ValueError as error:  # e.g. a prompt outside this image: skip it, keep the others
            skipped.append(f"{path}: {error}")
            print(f"skipping {path}: {error}", file=sys.stderr)
            continue
        stem = path.stem
        payload = prediction_to_json(args.task, prediction, stem, loaded.id2label, category_ids)
        (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
        picture = _render(args.task, image, prediction, loaded, prompt, args.threshold)
        visualize.save_png(picture, out_dir / f"{stem}.png")
        if args.attention:
            maps, titles = attention_maps(predictor, args.task, args.attention_objects)
            visualize.save_png(
                visualize.draw_attention(image, maps, titles), out_dir / f"{stem}_attention.png"
            )
        done += 1
        print(f"{path} -> {out_dir / stem}.json, .png")
    if skipped:
        print(f"{len(skipped)} of {len(paths)} images skipped", file=sys.stderr)
    return 0 if done else 1


def _render(
    task: str,
    image: Any,
    prediction: Mapping[str, Any],
    loaded: LoadedModel,
    prompt: Mapping[str, Any],
    threshold: float,
) -> Any:
    from pixtok import visualize

    if task == "detection":
        return visualize.draw_detections(
            image, prediction, id2label=loaded.id2label, score_threshold=threshold
        )
    if task == "referring":
        return visualize.draw_referring(image, prediction, expression=prompt.get("text"))
    if task in ("caption", "region_caption"):
        return visualize.draw_caption(
            image, prediction, title=task.replace("_", " "), prompt_box=prompt.get("box")
        )
    if task == "panoptic":
        return visualize.draw_panoptic(image, prediction, id2label=loaded.id2label)
    return visualize.draw_dense_captions(image, prediction)


def attention_maps(
    predictor: ModelPredictor, task: str, num_objects: int = 4
) -> tuple[list[np.ndarray], list[str]]:
    """Where the decoder looked on the image for the first objects of the last prediction.

    PixelLLM's T5 decoder does not attend to image positions directly: it cross-attends to the
    prompt extractor's ``num_tokens`` learnable tokens (and the text prompt), and each of those
    tokens attended to the image grid in the extractor's final token→image attention. The map of an
    output token is the product of both: decoder cross-attention (averaged over layers and heads,
    restricted to the extractor tokens) times the extractor's token→image attention (averaged over
    heads), cropped to the image content. Grid tokens (``extractor_config.grid_tokens``) each stand
    for one pooled block of the grid, so attention to them maps onto that block directly. Detection
    groups the 5 tokens of each object; other tasks use single tokens.

    Args:
        predictor: after a :meth:`ModelPredictor.predict` call on one image.
        task: that call's task.
        num_objects: maps to return at most.

    Returns:
        ``(maps, titles)``: maps (h, w) over the image content grid, one per object / token.

    Raises:
        CliError: panoptic models (no decoder), dense captions, or nothing generated.
    """
    import torch

    from pixtok.model.modeling_pixtok import shift_right

    loaded, inputs, generation = predictor.loaded, predictor.last_inputs, predictor.last_generation
    if loaded.kind != "pixtok" or generation is None or getattr(generation, "sequences", None) is None:
        raise CliError(
            "--attention needs a pixtok sequence model (the panoptic model has no decoder attention)"
        )
    if task == "dense_caption":
        raise CliError(
            "--attention is drawn for image-level sequences; dense_caption has one sequence per region"
        )
    core = loaded.model.model
    captured = _capture_token_to_image_attention(core, inputs)
    encoder_outputs, encoder_mask, _, prefix = captured["encoded"]
    sequences = generation.sequences[:1]
    # sdpa returns no attention weights: switch every config of the T5 (encoder and decoder stacks
    # hold their own copies) to eager for this one pass, then restore
    configs = {id(m.config): m.config for m in core.text_model.modules() if hasattr(m, "config")}
    previous = {key: config._attn_implementation for key, config in configs.items()}
    for config in configs.values():
        config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = core.text_model(
                encoder_outputs=encoder_outputs,
                attention_mask=encoder_mask[:1],
                decoder_inputs_embeds=core.decoder_inputs(shift_right(sequences)).to(prefix.dtype),
                output_attentions=True,
                return_dict=True,
            )
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]
    if not out.cross_attentions or out.cross_attentions[0] is None:
        raise CliError(
            "the language model returned no cross-attentions (needs an eager attention implementation)"
        )
    cross = torch.stack([a[0].float() for a in out.cross_attentions]).mean(dim=(0, 1))  # (T, Le)
    to_tokens = cross[:, : prefix.shape[1]]  # (T, P) learnable tokens, then grid tokens
    token_maps = captured["attention"][0]  # (num_tokens, g*g)
    grid = int(round(token_maps.shape[-1] ** 0.5))
    side = core.config.extractor_config.grid_tokens
    if side:
        token_maps = torch.cat([token_maps, _pooling_maps(grid, side).to(token_maps)], dim=0)
    h, w = (int(v) for v in inputs["image_sizes"][0].tolist())
    rows, cols = max(1, round(grid * h / max(h, w))), max(1, round(grid * w / max(h, w)))
    length = int((sequences[0] != 0).sum().item())
    if task == "detection":
        groups = [list(range(5 * k, 5 * k + 5)) for k in range(min(num_objects, length // 5))]
        titles = [f"object {k + 1}" for k in range(len(groups))]
    else:
        groups = [[t] for t in range(min(num_objects, max(length - 1, 0)))]
        tokenizer = loaded.processor.tokenizer
        titles = [str(tokenizer.convert_ids_to_tokens(int(sequences[0, g[0]]))) for g in groups]
    if not groups:
        raise CliError("nothing was generated for this image, so there is no attention to draw")
    maps = []
    for positions in groups:
        weights = to_tokens[positions].mean(dim=0)
        weights = weights / weights.sum().clamp(min=1e-12)
        image_map = (weights @ token_maps).reshape(grid, grid)[:rows, :cols]
        maps.append(image_map.cpu().numpy())
    return maps, titles


def _pooling_maps(grid: int, side: int) -> Any:
    """(side*side, grid*grid): row k spreads grid token k evenly over the cells it pooled.

    Matches ``adaptive_avg_pool2d(·, side)``'s bins on a ``grid x grid`` map.
    """
    import torch
    import torch.nn.functional as F

    # pooling the identity maps gives each output cell's weights over the input cells
    eye = torch.eye(grid * grid).reshape(grid * grid, 1, grid, grid)
    weights = F.adaptive_avg_pool2d(eye, side).reshape(grid * grid, side * side)
    return weights.T / weights.T.sum(dim=1, keepdim=True)


def _capture_token_to_image_attention(core: Any, inputs: Any) -> dict[str, Any]:
    """Run ``core.encode`` while recording the extractor's final token→image attention.

    Returns:
        ``{"encoded": core.encode(...)'s tuple, "attention": (B, num_tokens, g*g) averaged over heads}``.
    """
    import torch

    module = core.extractor.transformer.final_attn_token_to_image
    captured: dict[str, Any] = {}

    def hook(mod: Any, args: tuple, kwargs: dict, output: Any) -> None:
        query = kwargs["query"] if "query" in kwargs else args[0]
        key = kwargs["key"] if "key" in kwargs else args[1]
        q = mod._separate_heads(mod.q_proj(query), mod.num_attention_heads)
        k = mod._separate_heads(mod.k_proj(key), mod.num_attention_heads)
        weights = torch.softmax((q @ k.transpose(-1, -2)) * mod.scaling, dim=-1)  # (B, heads, Nq, g*g)
        captured["attention"] = weights.float().mean(dim=1)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            captured["encoded"] = core.encode(
                inputs["pixel_values"],
                inputs["eva_pixel_values"],
                inputs.get("input_ids"),
                inputs.get("attention_mask"),
                inputs.get("prompt_coords"),
                inputs.get("prompt_labels"),
                inputs.get("image_sizes"),
            )
    finally:
        handle.remove()
    if "attention" not in captured:
        raise CliError("could not record the prompt extractor's token-to-image attention")
    num_tokens = core.config.extractor_config.num_tokens
    captured["attention"] = captured["attention"][:, :num_tokens]
    return captured


DATA_PATH_OPTIONS: tuple[str, ...] = (
    "annotations",
    "images",
    "masks",
    "refs",
    "instances",
    "regions",
    "image_data",
    "root",
    "split",
    "kind",
)
"""``pixtok evaluate`` options passed to ``pixtok.data.load`` as keywords when given."""


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``pixtok evaluate``: metrics JSON + a readable table."""
    from pixtok import data
    from pixtok.evaluation.runner import evaluate_on_dataset

    if args.task not in TASK_CHOICES:
        raise CliError(f"unknown task {args.task!r}; expected one of {', '.join(TASK_CHOICES)}")
    paths = {name: getattr(args, name) for name in DATA_PATH_OPTIONS if getattr(args, name) is not None}
    for name, value in paths.items():
        if name not in ("split", "kind") and not Path(value).exists():
            raise CliError(f"--{name.replace('_', '-')} not found: {value}")
    try:
        dataset = data.load(args.source, **paths)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from None
    loaded = load_model(args.model, device=args.device, seed=args.seed)
    loaded.check_task(args.task)
    predictor = ModelPredictor(
        loaded, max_new_tokens=args.max_new_tokens, threshold=args.threshold, seed=args.seed
    )
    save = _prediction_saver(args.save_predictions, args.task, loaded) if args.save_predictions else None
    result = evaluate_on_dataset(
        dataset,
        args.task,
        predictor,
        limit=args.limit,
        max_prompts=args.max_prompts,
        batch_size=args.batch_size,
        annotations=args.annotations if args.source in ("coco", "objects365") else None,
        meteor_jar=args.meteor_jar,
        progress=not args.no_progress,
        on_prediction=save,
    )
    if loaded.random_weights:
        result.notes.append(f"{args.model} is an untrained preset (random weights)")
    payload = {"model": args.model, "source": args.source, **result.to_dict()}
    print(result.table())
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
        print(f"metrics written to {out}")
    return 0


def _prediction_saver(folder: str, task: str, loaded: LoadedModel) -> Callable[[str, Any, dict], None]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    counter: dict[str, int] = {}

    def save(image_id: str, image: Any, prediction: dict) -> None:
        n = counter[image_id] = counter.get(image_id, -1) + 1
        stem = f"{image_id}" if n == 0 else f"{image_id}_{n}"
        payload = prediction_to_json(task, prediction, image_id, loaded.id2label)
        (out / f"{stem}.json").write_text(json.dumps(payload) + "\n")

    return save


def cmd_synth(args: argparse.Namespace) -> int:
    """``pixtok synth``: the data package's synthetic benchmark writer."""
    from pixtok.data import synthetic

    return int(synthetic.run(args) or 0)


def cmd_convert_sam(args: argparse.Namespace) -> int:
    """``pixtok convert-sam``: official segment-anything ``.pth`` → pixtok SAM tower safetensors."""
    from pixtok.model.sam import convert_segment_anything_checkpoint

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise CliError(f"SAM checkpoint not found: {checkpoint}")
    written = convert_segment_anything_checkpoint(checkpoint, args.out)
    print(f"wrote {written}")
    return 0


# --- parser ------------------------------------------------------------------------------------
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a save_pretrained folder, a preset (tiny, base, …) or panoptic-<preset>",
    )
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASK_CHOICES)}")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for sampling and preset weights (default 0)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="decoding budget (default: the task's)"
    )
    parser.add_argument("--threshold", type=float, default=0.0, help="detection score threshold (default 0)")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``pixtok`` parser with its four subcommands.

    Args:
        argv: the arguments about to be parsed; ``synth``'s options come from the data package and
            are imported only when ``synth`` is the command (``pixtok --help`` stays light).
    """
    parser = argparse.ArgumentParser(
        prog="pixtok", description="pixtok: images in, tokens out (Pix2Seq, PixelLLM, Pix2Seq-D)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    predict = sub.add_parser(
        "predict",
        help="run a model on images: JSON + PNG per image",
        description="Run a model on images; write IMAGE.json and IMAGE.png per image into --out.",
    )
    _add_model_options(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--text", help="referring expression (referring) or extra prompt text")
    predict.add_argument(
        "--box",
        type=float,
        nargs=4,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box prompt, pixels (region_caption)",
    )
    predict.add_argument(
        "--point", type=float, nargs=2, metavar=("X", "Y"), help="point prompt, pixels (region_caption)"
    )
    predict.add_argument(
        "--coco-categories", help="COCO JSON whose categories give detection category_id values"
    )
    predict.add_argument(
        "--attention", action="store_true", help="also draw decoder cross-attention for the first objects"
    )
    predict.add_argument(
        "--attention-objects", type=int, default=4, help="objects / words with an attention map (default 4)"
    )
    predict.set_defaults(handler=cmd_predict)

    evaluate = sub.add_parser(
        "evaluate",
        help="score a model on a dataset: metrics JSON + table",
        description="Score a model on any dataset pixtok.data.load reads (--source plus its paths).",
    )
    _add_model_options(evaluate)
    evaluate.add_argument(
        "--source",
        required=True,
        help="pixtok.data source: coco, objects365, coco_panoptic, localized_narratives, refcoco, visual_genome, synthetic, …",
    )
    for name in DATA_PATH_OPTIONS:
        evaluate.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"loader keyword {name}=")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate at most N images")
    evaluate.add_argument(
        "--max-prompts", type=int, default=5, help="expressions / regions per image at most (default 5)"
    )
    evaluate.add_argument("--batch-size", type=int, default=1, help="images per generate call (default 1)")
    evaluate.add_argument(
        "--meteor-jar", help="meteor-1.5.jar for METEOR (else $PIXTOK_METEOR_JAR; without it METEOR is n/a)"
    )
    evaluate.add_argument("--out", help="write the metrics JSON here")
    evaluate.add_argument(
        "--save-predictions", metavar="DIR", help="also write every prediction as JSON into DIR"
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=cmd_evaluate)

    synth = sub.add_parser(
        "synth",
        help="write the synthetic benchmark in the real on-disk formats",
        description="Write the synthetic benchmark (COCO instances, COCO panoptic, Localized Narratives, RefCOCO, Visual Genome formats).",
    )
    if argv is None or "synth" in list(argv):
        _add_synth_arguments(synth)
    synth.set_defaults(handler=cmd_synth)

    convert = sub.add_parser(
        "convert-sam",
        help="official SAM .pth -> pixtok SAM tower (safetensors)",
        description="Convert an official segment-anything checkpoint into pixtok's SAM tower weights.",
    )
    convert.add_argument(
        "checkpoint", metavar="CHECKPOINT.pth", help="segment-anything checkpoint (sam_vit_*.pth)"
    )
    convert.add_argument("--out", required=True, help="output folder")
    convert.set_defaults(handler=cmd_convert_sam)
    return parser


def _add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    from pixtok.data import synthetic

    synthetic.add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pixtok`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args))
    except CliError as error:
        if args.verbose:
            raise
        print(f"pixtok {args.command}: error: {error}", file=sys.stderr)
    except FileNotFoundError as error:
        if args.verbose:
            raise
        print(f"pixtok {args.command}: error: file not found: {error.filename or error}", file=sys.stderr)
    except (ValueError, KeyError) as error:
        if args.verbose:
            raise
        print(f"pixtok {args.command}: error: {error}", file=sys.stderr)
    except ImportError as error:
        print(
            f"pixtok {args.command}: error: this command needs {error.name or error} (not available: {error})",
            file=sys.stderr,
        )
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "DATA_PATH_OPTIONS",
    "EXIT_USAGE",
    "TASK_CHOICES",
    "CliError",
    "LoadedModel",
    "ModelPredictor",
    "attention_maps",
    "build_parser",
    "load_model",
    "main",
    "prediction_to_json",
]
