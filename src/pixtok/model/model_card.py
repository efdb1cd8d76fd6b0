"""The Hub side of :class:`~.modeling_pixtok.PixtokForConditionalGeneration`: its model card and
``push_to_hub`` (weights, config, code with ``auto_map``, card). A mixin, so the methods are the
model's (``model.create_model_card``, ``model.push_to_hub``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .vocab import TASKS


class PixtokHubMixin:
    """Model card and Hub upload of the PixelLLM model (mixed into the model class)."""

    # --- Hub ----------------------------------------------------------------------------------------
    def create_model_card(
        self,
        model_name: str | None = None,
        base_models: dict[str, str] | None = None,
        datasets: list[str] | None = None,
        license: str = "apache-2.0",
        tags: list[str] | None = None,
        description: str | None = None,
    ) -> str:
        """The README.md (YAML metadata + markdown) that :meth:`push_to_hub` uploads.

        Args:
            model_name: repo id or display name.
            base_models: pretrained parts, e.g. ``{"sam": "facebook/sam-vit-huge", "t5": "google/flan-t5-xl"}``.
            datasets: hub ids of the training data.
            license: SPDX id of the weights' license.
            tags: extra hub tags.
            description: a paragraph placed under the title.

        Returns:
            The card text.
        """
        config = self.config
        counts = self.parameter_counts()
        vocab = config.vocab
        name = model_name or "pixtok model"
        meta = [
            "---",
            "library_name: transformers",
            "pipeline_tag: image-text-to-text",
            f"license: {license}",
        ]
        all_tags = [
            "pixtok",
            "pixelllm",
            "pix2seq",
            "object-detection",
            "image-captioning",
            "referring-expression",
        ]
        all_tags += [t for t in (tags or []) if t not in all_tags]
        meta += ["tags:"] + [f"- {t}" for t in all_tags]
        if base_models:
            meta += ["base_model:"] + [f"- {v}" for v in base_models.values()]
        if datasets:
            meta += ["datasets:"] + [f"- {d}" for d in datasets]
        meta.append("---")

        def billions(n: int) -> str:
            return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"

        t5, sam, eva = config.text_config, config.vision_config, config.eva_config
        lines = [
            f"# {name}",
            "",
            description
            or (
                "A pixtok model: PixelLLM's architecture (SAM + EVA02 image towers, a "
                "prompt feature extractor, a T5 language model) reading an image and an optional point/box/text "
                "prompt and writing tokens: Pix2Seq detection sequences, captions with one image point per "
                "word, referred boxes and masks, region and dense captions."
            ),
            "",
            "## Architecture",
            "",
            "| part | size | parameters |",
            "| --- | --- | --- |",
            f"| SAM image encoder | ViT width {sam.hidden_size}, depth {sam.num_hidden_layers}, {config.image_size} px | {billions(counts['sam'])} |",
            f"| EVA02 tower | width {eva.embed_dim}, depth {eva.depth}, {config.eva_image_size} px | {billions(counts['eva02'])} |",
            f"| T5 | d_model {t5.d_model}, {t5.num_layers} + {t5.num_decoder_layers} layers | {billions(counts['text'])} |",
            f"| LoRA (r={config.lora_r}, on {', '.join(config.lora_target_modules)}) | | {billions(counts['lora'])} |",
            f"| prompt extractor, heads, SAM prompt encoder + mask decoder | {config.extractor_config.num_tokens} learnable tokens | {billions(counts['other'])} |",
            f"| **total** (trainable {billions(counts['trainable'])}) | | {billions(counts['total'])} |",
            "",
            f"Vocabulary: {vocab.size} ids = {vocab.base_vocab_size} base T5 pieces + {vocab.num_bins} coordinate "
            f"bins + {vocab.num_classes} class tokens + noise + {len(TASKS)} task tokens"
            + (
                f" (the T5's embedding and LM head have {t5.vocab_size} rows, padded to a multiple of "
                f"{config.pad_vocab_to_multiple_of}; the extra ids are never emitted)"
                if t5.vocab_size != vocab.size
                else ""
            )
            + ". Coordinates are normalized to the padded square input (x / max(h, w)).",
            "",
            "## Use",
            "",
            "```python",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'model = AutoModelForImageTextToText.from_pretrained("{name}", trust_remote_code=True)',
            f'processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)',
            'inputs = processor(images=[image], task="detection", return_tensors="pt")',
            "generated = model.generate(**inputs)",
            "detections = processor.post_process_object_detection(generated, threshold=0.3)",
            "```",
            "",
            "Or with pixtok installed: `pixtok.PixtokForConditionalGeneration.from_pretrained(...)`.",
            "",
            "## Training settings",
            "",
            f"- towers frozen: {config.freeze_towers}; T5 frozen: {config.freeze_text_model} "
            f"(LoRA rank {config.lora_r}, alpha {config.lora_alpha}, dropout {config.lora_dropout})",
            f"- LM loss: label smoothing {config.label_smoothing}, EOS weight {config.eos_weight}"
            + (
                f", Gaussian coordinate targets (std {config.coordinate_label_sigma} bins)"
                if config.coordinate_label_sigma
                else ""
            ),
            f"- tasks: {', '.join(t for t in TASKS if t != 'panoptic')}",
        ]
        if base_models:
            lines += ["", "## Pretrained parts", ""] + [
                f"- {part}: `{ref}`" for part, ref in base_models.items()
            ]
        if datasets:
            lines += ["", "## Training data", ""] + [f"- `{d}`" for d in datasets]
        return "\n".join(meta + [""] + lines) + "\n"

    def write_model_card(self, directory: str | Path, **card_kwargs: Any) -> Path:
        """Write :meth:`create_model_card` to ``directory/README.md`` and return its path."""
        path = Path(directory) / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.create_model_card(**card_kwargs), encoding="utf-8")
        return path

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "5GB",
        card_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Upload weights, config, code (``auto_map``) and a pixtok model card to the Hub.

        Args:
            repo_id: ``namespace/name``; created if missing.
            commit_message, private, token, revision, create_pr: as ``huggingface_hub``'s.
            max_shard_size: safetensors shard size.
            card_kwargs: arguments of :meth:`create_model_card`.

        Returns:
            the ``CommitInfo`` of the upload.
        """
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            self.write_model_card(folder, model_name=repo_id, **(card_kwargs or {}))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or "Upload pixtok model",
                revision=revision,
                create_pr=create_pr,
            )


__all__ = ["PixtokHubMixin"]
