"""Generation for :class:`~.modeling_pixtok.PixtokForConditionalGeneration`: one task per batch,
the encoder run once, then either the plain decode loop (:func:`.decoding.decode` over the T5 with
its KV cache) or the static-cache / CUDA-graph engine (:mod:`.decode_engine`), and the heads that
turn decoder states into points, boxes and masks.

Kept apart from the modeling file as a mixin so that the model file reads as the model; the
methods are the model's (``model.generate``, ``model.decode_engine``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from .decode_engine import DetectionRows, StaticT5Decoder
from .decoding import GenerationOptions, coordinate_offsets, decode, grammar_for
from .sam import BOX_LABELS
from .towers import VisionFeatures
from .vocab import DECODER_START_ID, TASKS, task_index


@dataclass
class PixtokGenerateOutput(ModelOutput):
    """Output of :meth:`PixtokForConditionalGeneration.generate` (``docs/ARCHITECTURE.md``).

    For ``dense_caption`` B' = B * K (image-major: rows ``i*K .. i*K+K-1`` caption image ``i``'s
    proposals); otherwise B' = B.

    Attributes:
        sequences: (B', T) long generated ids without the start token, 0 after EOS.
        token_scores: (B', T) float probability of each chosen token under the grammar-masked softmax.
        points: (B', T, 2) xy model space, the trace head on every generated state.
        boxes: (B', 4) xyxy model space from the box head at the first output step's state
            (`referring`), else `None`.
        masks: (B', 4g, 4g) mask logits (`referring`), else `None`.
        proposals: (B, K, 4) xyxy model space (`dense_caption`), else `None`.
        proposal_scores: (B, K) objectness probabilities (`dense_caption`), else `None`.
        task_ids: (B,) long, passed through.
        image_sizes: (B, 2) long original (h, w), passed through.
        coordinate_offsets: (B', T) float sub-bin offsets of the coordinate tokens, in bins
            (``coordinate_window`` > 0; :func:`~.decoding.coordinate_offsets`), else `None`.
    """

    sequences: torch.Tensor | None = None
    token_scores: torch.Tensor | None = None
    points: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    proposals: torch.Tensor | None = None
    proposal_scores: torch.Tensor | None = None
    task_ids: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None
    coordinate_offsets: torch.Tensor | None = None


class PixtokGenerationMixin:
    """``generate`` and the decode engine of the PixelLLM model (mixed into the model class)."""

    # --- generation -----------------------------------------------------------------------------------
    def _task_of(self, task_ids: torch.Tensor | None, input_ids: torch.Tensor | None) -> str:
        """The batch's one task, from ``task_ids`` or the task token leading ``input_ids``."""
        if task_ids is not None:
            unique = torch.unique(task_ids).tolist()
            if len(unique) != 1:
                raise ValueError(
                    f"generate needs one task per batch, got task_ids {unique}; split the batch by task"
                )
            if not 0 <= unique[0] < len(TASKS):
                raise ValueError(f"task_ids must index {TASKS}, got {unique[0]}")
            return TASKS[unique[0]]
        if input_ids is not None and input_ids.numel():
            vocab = self.config.vocab
            first = torch.unique(input_ids[:, 0]).tolist()
            if len(first) == 1 and vocab.task_offset <= first[0] < vocab.size:
                return vocab.task_from_id(first[0])
        raise ValueError("generate needs task_ids (B,) or input_ids starting with a task token")

    def _decode_with_cache(
        self,
        encoder_outputs: BaseModelOutput,
        encoder_mask: torch.Tensor,
        task: str,
        options: GenerationOptions,
        generator: torch.Generator | None,
    ):
        """Run :func:`decoding.decode` with a step function that owns the T5 KV cache."""
        model = self.model
        cache: dict[str, Any] = {"past": None}

        def step_fn(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, states, cache["past"] = model.decode(
                encoder_outputs, encoder_mask, ids, past_key_values=cache["past"], use_cache=True
            )
            return logits[:, -1], states[:, -1]

        batch = encoder_outputs.last_hidden_state.shape[0]
        grammar = grammar_for(task, self.config.vocab, banned_ids=self.config.vocab.sentinel_ids)
        device = encoder_outputs.last_hidden_state.device
        return decode(
            step_fn, grammar, batch, options, device, start_id=DECODER_START_ID, generator=generator
        )

    # --- the fast decode path -------------------------------------------------------------------------
    def decode_engine(self, batch_size: int, max_length: int) -> StaticT5Decoder:
        """A :class:`~.decode_engine.StaticT5Decoder` over this model's T5 (static KV cache, CUDA graphs on
        a GPU, LoRA merged and pixtok's added-token deltas folded in). Tensors it changes (LoRA-merged
        projections, the embedding and LM head with the deltas) are copies; the others share the
        T5's storage when device and dtype match.

        Built on first use and kept for later calls of the same batch size, length, device and dtype;
        ``model.train()`` drops it (weights are about to change), as does :meth:`release_decode_engine`.
        """
        text = self.model.text_model
        device, dtype = text.lm_head.weight.device, text.lm_head.weight.dtype
        key = (batch_size, max_length, str(device), str(dtype))
        cached = self.__dict__.get("_decode_engine")
        if cached is not None and cached[0] == key:
            return cached[1]
        positions = self.model.decoder_positions
        engine = StaticT5Decoder(
            text,
            batch_size,
            max_length,
            dtype=dtype,
            device=device,
            position_embeddings=None if positions is None else positions.weight.detach(),
            input_scale=self.config.text_input_scale,
        )
        added = self.model.added_tokens
        if added is not None:  # the frozen-T5 case: pixtok's own rows learn as deltas
            # clone first: on the T5's own device and dtype the engine's tensors share its storage
            base = added.base_vocab_size
            engine.embedding = engine.embedding.clone()
            engine.embedding[base:] += (
                added.embedding_delta.detach().to(engine.embedding) * engine.input_scale
            )
            engine.lm_head = engine.lm_head.clone()
            engine.lm_head[base:] += added.head_delta.detach().to(engine.lm_head)
        self.__dict__["_decode_engine"] = (key, engine)  # not a submodule: never saved, never moved
        return engine

    def release_decode_engine(self) -> None:
        """Free the cached decode engine (its weight copies and CUDA graphs)."""
        self.__dict__.pop("_decode_engine", None)

    def train(self, mode: bool = True) -> Any:
        if mode:
            self.release_decode_engine()
        return super().train(mode)

    def _decode_with_engine(
        self,
        encoder_outputs: BaseModelOutput,
        encoder_mask: torch.Tensor,
        task: str,
        options: GenerationOptions,
    ):
        """The same decoding as :meth:`_decode_with_cache`, through the static-cache engine: the fused
        per-object CUDA-graph path for closed-set detection, its ``step_fn`` otherwise.

        The engine keeps its own dtype (its buffers and captured graphs are typed), so a caller's
        ``autocast`` is switched off inside it (training loops evaluate under one)."""
        hidden = encoder_outputs.last_hidden_state
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            engine = self.decode_engine(hidden.shape[0], options.max_new_tokens + 1)
            engine.prefill(hidden, encoder_mask)
            vocab = self.config.vocab
            if task == "detection" and not vocab.open_vocabulary:
                return engine.generate_detection(
                    DetectionRows.from_vocab(vocab, rank_against_noise=options.rank_against_noise),
                    max_new_tokens=options.max_new_tokens,
                    do_sample=options.do_sample,
                    top_p=options.top_p,
                    temperature=options.temperature,
                    eos_logit_offset=options.eos_logit_offset,
                    min_objects=options.min_objects,
                    max_objects=options.max_objects,
                )
            grammar = grammar_for(task, vocab, banned_ids=vocab.sentinel_ids)
            return decode(
                engine.step_fn(), grammar, hidden.shape[0], options, hidden.device, start_id=DECODER_START_ID
            )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        eva_pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_coords: torch.Tensor | None = None,
        prompt_labels: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        eos_logit_offset: float | None = None,
        rank_against_noise: bool | None = None,
        coordinate_window: int | None = None,
        generator: torch.Generator | None = None,
        image_embeddings: torch.Tensor | None = None,
        fused_features: torch.Tensor | None = None,
        decode_engine: bool | None = None,
        **kwargs: Any,
    ) -> PixtokGenerateOutput:
        """Generate token sequences (and points, boxes, masks, proposals) for one task per batch.

        The encoder runs once; the decode loop (``decoding.decode``) calls a step function that keeps
        the T5 KV cache. ``None`` options take the task's defaults (``GenerationOptions.for_task``).
        ``dense_caption`` runs the proposal head, keeps the ``num_proposals`` best boxes per image and
        region-captions each (box prompt + the ``region_caption`` task token; the tower features are
        computed once per image).

        Args:
            pixel_values, eva_pixel_values, input_ids, attention_mask, prompt_coords, prompt_labels,
                image_sizes: as in :meth:`forward`.
            task_ids: (B,) index into ``vocab.TASKS``; all equal. Without it the task token leading
                ``input_ids`` decides.
            max_new_tokens, do_sample, top_p, temperature, eos_logit_offset, rank_against_noise,
                coordinate_window: decoding options (:class:`~.decoding.GenerationOptions`).
            generator: RNG for reproducible sampling.
            image_embeddings, fused_features: cached tower features instead of the pixels.
            decode_engine: decode with the static-cache engine (:meth:`decode_engine`): ``None`` (auto)
                uses it for closed-set detection on a GPU when no ``generator`` is given — the fused
                CUDA-graph path, same tokens as the plain loop; ``True`` forces it (any task, any
                device), ``False`` keeps the plain loop.
            **kwargs: training-only keys of a processor batch (``labels``...) are ignored.

        Returns:
            :class:`PixtokGenerateOutput`.
        """
        task = self._task_of(task_ids, input_ids)
        if task == "panoptic":
            raise ValueError(
                "the panoptic task is generated by PixtokForPanopticSegmentation, not this model"
            )
        options = GenerationOptions(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            top_p=top_p,
            temperature=1.0 if temperature is None else temperature,
            eos_logit_offset=0.0 if eos_logit_offset is None else eos_logit_offset,
            rank_against_noise=True if rank_against_noise is None else rank_against_noise,
            coordinate_window=0 if coordinate_window is None else coordinate_window,
        ).for_task(task, max_objects=self.config.max_objects)
        positions = self.config.decoder_position_embeddings
        if positions and options.max_new_tokens > positions:
            raise ValueError(
                f"max_new_tokens {options.max_new_tokens} exceeds the model's {positions} decoder "
                "positions (config.decoder_position_embeddings)"
            )
        features = self.model.cached_features(image_embeddings, fused_features)
        if features is None:
            features = self.model.encode_images(pixel_values, eva_pixel_values)
        batch = features.fused.shape[0]
        proposals = proposal_scores = None
        if task == "dense_caption":
            logits, boxes = self.proposal_head(features.fused)
            k = min(self.config.num_proposals, logits.shape[1])
            scores, index = logits.sigmoid().topk(k, dim=1)
            proposals = boxes.gather(1, index[..., None].expand(-1, -1, 4)).clamp(0, 1)
            proposal_scores = scores
            features = VisionFeatures(
                sam=features.sam.repeat_interleave(k, dim=0), fused=features.fused.repeat_interleave(k, dim=0)
            )
            prompt_coords = proposals.reshape(batch * k, 2, 2)
            prompt_labels = torch.tensor(BOX_LABELS, device=prompt_coords.device).expand(batch * k, 2)
            # each proposal is captioned as a region caption (the task the captions were trained on)
            region_task = self.config.vocab.task_id("region_caption")
            input_ids = torch.full((batch * k, 1), region_task, dtype=torch.long, device=prompt_coords.device)
            attention_mask = None
        encoder_outputs, mask, features, _ = self.model.encode(
            None,
            None,
            input_ids,
            attention_mask,
            prompt_coords,
            prompt_labels,
            image_sizes,
            features=features,
        )
        if decode_engine is None:
            decode_engine = (
                task == "detection"
                and not self.config.open_vocabulary
                and generator is None
                and encoder_outputs.last_hidden_state.is_cuda
            )
        if decode_engine:
            if generator is not None:
                raise ValueError(
                    "decode_engine=True draws its own samples; pass generator=None or decode_engine=False"
                )
            result = self._decode_with_engine(encoder_outputs, mask, task, options)
        else:
            result = self._decode_with_cache(encoder_outputs, mask, task, options, generator)
        points = self.trace_head(result.hidden_states)
        offsets = None
        if options.coordinate_window:
            vocab = self.config.vocab
            bin_ids = torch.arange(
                vocab.coord_offset, vocab.coord_offset + vocab.num_bins, device=result.sequences.device
            )
            offsets = coordinate_offsets(
                result.sequences,
                result.hidden_states,
                lambda states: self.model.token_logits(states, bin_ids),
                vocab.coord_offset,
                vocab.num_bins,
                options.coordinate_window,
            )
        boxes = masks = None
        if task == "referring":
            # the state forward() trains it on (and the grounding map with config.box_head_grounding)
            boxes = self.referred_boxes(result.hidden_states[:, 0], encoder_outputs.last_hidden_state)
            masks = self.predict_masks(features.sam, boxes)[:, 0]
        return PixtokGenerateOutput(
            sequences=result.sequences,
            token_scores=result.token_scores,
            points=points.float(),
            boxes=None if boxes is None else boxes.float(),
            masks=None if masks is None else masks.float(),
            proposals=None if proposals is None else proposals.float(),
            proposal_scores=None if proposal_scores is None else proposal_scores.float(),
            task_ids=task_ids if task_ids is not None else torch.full((batch,), task_index(task)),
            image_sizes=image_sizes,
            coordinate_offsets=offsets,
        )


__all__ = ["PixtokGenerateOutput", "PixtokGenerationMixin"]
