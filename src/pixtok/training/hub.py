"""The model card of a trained run and its upload to the Hugging Face Hub.

``write_model_card`` writes ``README.md`` into the run's output folder (YAML metadata the Hub
reads, the validation metrics, the training configuration, how to load the model); it runs
offline, and ``push_folder`` uploads that folder with ``huggingface_hub``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .config import RecipeConfig


def _metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    lines = ["| task | metric | value |", "| --- | --- | --- |"]
    for task, values in metrics.items():
        for name, value in values.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"| {task} | {name} | {shown} |")
    return "\n".join(lines)


def write_model_card(output_dir: Path, recipe: RecipeConfig, result: dict[str, Any]) -> Path:
    """Write ``output_dir/README.md`` with the run's metrics and configuration; returns its path."""
    metrics = result.get("val", {})
    header = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["pixtok", "pix2seq", "pixelllm", *sorted(recipe.tasks)],
        "model-index": [
            {
                "name": output_dir.name,
                "results": [
                    {
                        "task": {"type": task},
                        "metrics": [
                            {"type": k, "value": float(v)}
                            for k, v in values.items()
                            if isinstance(v, (int, float))
                        ],
                    }
                    for task, values in metrics.items()
                ],
            }
        ],
    }
    config_yaml = yaml.safe_dump(json.loads(json.dumps(recipe.to_dict(), default=str)), sort_keys=False)
    body = f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# {output_dir.name}

A [pixtok](https://github.com/) model (preset `{recipe.model.preset}`) trained for {result.get("step")} steps
on {", ".join(recipe.tasks)} ({recipe.data.source} data).

## Validation metrics

{_metrics_table(metrics)}

Optimizer steps skipped for a non-finite loss: {result.get("nan_skipped_steps", 0)}.

## Use

```python
import pixtok  # registers the Auto classes; without pixtok installed use trust_remote_code=True
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{recipe.push_to_hub or output_dir}")
processor = AutoProcessor.from_pretrained("{recipe.push_to_hub or output_dir}")
```

## Training configuration

```yaml
{config_yaml.strip()}
```
"""
    path = output_dir / "README.md"
    path.write_text(body)
    return path


def push_folder(output_dir: Path, repo_id: str) -> str:
    """Upload ``output_dir`` (model, processor, card, metrics; not checkpoints) to ``repo_id``."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        ignore_patterns=["checkpoints/*", "pixtok/*", "*.tmp*"],
        commit_message="pixtok: upload trained model",
    )
    return str(info)


__all__ = ["push_folder", "write_model_card"]
