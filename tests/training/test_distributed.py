"""Two processes on the CPU (gloo): the shared loop under DDP and FSDP2 trains like one process.

What the data sharding guarantees, and what is asserted here (tiny preset, synthetic COCO data,
Pix2Seq sequence augmentation on, as ``recipes/configs/coco_detection.yaml`` ships):

* ``W`` processes at per-process batch ``B`` build exactly the micro-batches of ONE process at
  batch ``B`` with ``W``-step gradient accumulation: sample ``j`` is a pure function of the seed
  and ``j`` (:mod:`pixtok.training.sampling`), and the processor's batch-level randomness (object
  order, noise boxes) is keyed by the micro-batch's first sample (``loop.BatchMaker``). DDP's
  gradient is the mean of the processes' gradients, accumulation's the mean of the micro-batches'
  — so losses, updates and the saved weights are those of the accumulation run. Asserted: step-1
  loss to 1e-4 relative (every logged step, in fact), weights to 1e-5.
* One process at batch ``W*B`` trains on the same samples with the same per-sample augmentation,
  but its loss is NOT the same number, for two reasons that are properties of the method, not of
  the sharding: the loss is a token-weighted mean over the micro-batch (``sum(w*ce) / sum(w)``),
  which DDP replaces by the mean of per-process means (tokens weigh differently when the
  processes' token counts differ); and Pix2Seq's sequence augmentation draws object order and noise
  boxes across the micro-batch (noise boxes copy other images' boxes), so one micro-batch of
  ``2B`` is not two of ``B``. Asserted: step-1 loss within 10 % (4 % measured).

How the processes are started: ``accelerate launch --cpu --num_processes 2`` starts ONE process
(accelerate's multi-CPU mode needs mpirun), so the test uses ``python -m torch.distributed.run``
with the CPU shim of ``benchmarks/learning/multigpu.py --cpu-shim``, which first creates
``PartialState(cpu=True)`` — ``recipe.prepare`` calls ``PartialState()`` before the Accelerator
exists, and without the shim every rank of a GPU-less torchrun is a lone process (accelerate reads
``ACCELERATE_USE_CPU`` only in ``AcceleratorState``).

FSDP: torch's FSDP2 (``fully_shard``) runs on the CPU with gloo, but accelerate turns FSDP on only
for GPU-like distributed types. The shim turns accelerate's MULTI_CPU state into FSDP with the
plugin accelerate builds from the ``FSDP_*`` environment, which the test derives from
``recipes/accelerate/fsdp.yaml`` exactly as ``accelerate launch`` does (mixed precision ``no``:
the recipe's ``train.mixed_precision`` wins over the launcher's anyway). So the FSDP case runs
accelerate's real FSDP2 path — sharding, the full-state-dict gather for evaluation and
``save_pretrained``, sharded ``save_state`` and a resume from it — on the CPU; it is marked
``slow`` (two launches, about 50 s on 2 cores).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixtok.training.recipe import main

from .test_recipes import _args as recipe_args

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "coco_detection.py"
STEPS = 3
BATCH = 2  # per process

# one rank of a GPU-less torchrun group: `multigpu.py --cpu-shim SCRIPT ARGS` runs SCRIPT as that rank
SHIM = ROOT / "benchmarks" / "learning" / "multigpu.py"


def _args(out, cache_dir, steps, batch, *extra):
    """test_recipes' arguments for the detection recipe, at ``batch`` per process (a later --set wins)."""
    return recipe_args(
        "coco_detection",
        out,
        cache_dir,
        steps,
        "--set",
        f"train.batch_size={batch}",
        "--set",
        "train.log_every=1",
        "--set",
        "train.max_new_tokens=20",
        *extra,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_env() -> dict[str, str]:
    """The FSDP_* variables `accelerate launch --config_file recipes/accelerate/fsdp.yaml` exports."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(
        ["--config_file", str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"), str(RECIPE)]
    )
    env = prepare_multi_gpu_env(_validate_launch_command(parsed)[0])
    return {k: v for k, v in env.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}


def _launch(tmp_path, args, extra_env=None):
    """Two ranks of the recipe script; returns the output of both (raises if either fails)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PIXTOK_CACHE": str(tmp_path / "pixtok-cache"),
        **(extra_env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(SHIM),
        "--cpu-shim",
        str(RECIPE),
        *args,
    ]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout + done.stderr


def _losses(metrics):
    return [h["train/loss"] for h in metrics["history"]]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _assert_same_weights(a, b, atol):
    assert set(a) == set(b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pixtok-cache"))


@pytest.fixture(scope="module")
def accumulation_run(tmp_path_factory, cache_dir):
    """The reference: one process, batch B, 2-step gradient accumulation (also writes the data)."""
    out = tmp_path_factory.mktemp("accumulation")
    result = main(_args(out, cache_dir, STEPS, BATCH, "--set", "train.gradient_accumulation_steps=2"))
    assert result["num_processes"] == 1 and result["global_batch_size"] == 2 * BATCH
    return out, result


def test_ddp_two_processes_train_like_one_process_with_accumulation(tmp_path, cache_dir, accumulation_run):
    ref_dir, ref = accumulation_run
    out = tmp_path / "ddp"
    _launch(tmp_path, _args(out, cache_dir, STEPS, BATCH))

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["distributed_type"] == "MULTI_CPU"
    assert metrics["batch_size"] == BATCH and metrics["global_batch_size"] == 2 * BATCH
    history = metrics["history"]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert [h["samples"] for h in history] == [2 * BATCH * s for s in range(1, STEPS + 1)]
    seconds = [h["seconds"] for h in history]
    assert all(0 < a < b for a, b in zip(seconds, seconds[1:])), seconds
    # both processes reached the final checkpoint (each writes its own RNG state)
    checkpoint = out / "checkpoints" / f"checkpoint-{STEPS}"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()

    # same global batch, same update: the accumulation run's numbers
    losses, expected = _losses(metrics), _losses(ref)
    assert losses[0] == pytest.approx(expected[0], rel=1e-4)
    assert losses == pytest.approx(expected, rel=1e-4)
    _assert_same_weights(_weights(out), _weights(ref_dir), atol=1e-5)

    import pixtok

    pixtok.PixtokForConditionalGeneration.from_pretrained(out)  # strict: a full, unsharded model

    # one process at the global batch: same samples, not the same loss (see the module docstring)
    single = main(_args(tmp_path / "single", cache_dir, 1, 2 * BATCH))
    assert single["global_batch_size"] == 2 * BATCH
    assert _losses(single)[0] == pytest.approx(losses[0], rel=0.10)


@pytest.mark.slow
def test_fsdp_two_processes_gather_save_and_resume(tmp_path, cache_dir, accumulation_run):
    ref_dir, ref = accumulation_run
    out = tmp_path / "fsdp"
    env = _fsdp_env()
    assert env["FSDP_VERSION"] == "2" and env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    _launch(tmp_path, _args(out, cache_dir, STEPS - 1, BATCH), env)
    first = json.loads((out / "metrics.json").read_text())
    assert first["num_processes"] == 2 and first["distributed_type"] == "FSDP"
    assert _losses(first) == pytest.approx(_losses(ref)[: STEPS - 1], rel=1e-4)
    checkpoint = out / "checkpoints" / f"checkpoint-{STEPS - 1}"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()  # sharded (torch.distributed.checkpoint)

    # resume from the sharded checkpoint (the optimizer state of never-trained heads included)
    output = _launch(tmp_path, _args(out, cache_dir, STEPS, BATCH, "--resume-from", str(out)), env)
    assert f"resumed from {checkpoint}" in output
    second = json.loads((out / "metrics.json").read_text())
    # the history is the whole run's: the first segment's entries, then the resumed step
    assert [h["step"] for h in second["history"]] == list(range(1, STEPS + 1))
    assert second["history"][: STEPS - 1] == first["history"]
    assert _losses(second) == pytest.approx(_losses(ref), rel=1e-4)

    # evaluation and save_pretrained saw the gathered, trained weights
    _assert_same_weights(_weights(out), _weights(ref_dir), atol=1e-5)
    assert second["val"]["detection"]["val_loss"] == pytest.approx(
        ref["val"]["detection"]["val_loss"], rel=1e-4
    )
    import pixtok

    model = pixtok.PixtokForConditionalGeneration.from_pretrained(out)
    assert all(not isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
