"""Regional compilation: which blocks are compiled, and that a compiled step equals the eager one.

Compiled with the ``aot_eager`` backend (dynamo traces every block and AOTAutograd builds its
forward and backward graphs, without inductor's code generation, which takes minutes on a 2-core CPU).
"""

import copy
from collections import Counter

import pytest
import torch

from pixtok.model.configuration_pixtok import PixtokConfig
from pixtok.model.modeling_pixtok import PixtokForConditionalGeneration
from pixtok.training.compilation import (
    block_stacks,
    compile_options,
    compile_repeated_blocks,
    eager,
    repeated_blocks,
    standalone_regions,
    step_begin,
)
from pixtok.training.config import ConfigError, load_config

from .test_recipes import _args, main


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PixtokForConditionalGeneration(PixtokConfig.from_preset("tiny")).eval()


def _batch(config, batch=2):
    vocab = config.vocab
    torch.manual_seed(1)
    labels = torch.randint(vocab.coord_offset, vocab.coord_offset + vocab.num_bins, (batch, 11))
    labels[:, -1] = vocab.eos_id
    return {
        "pixel_values": torch.randn(batch, 3, config.image_size, config.image_size),
        "eva_pixel_values": torch.randn(batch, 3, config.eva_image_size, config.eva_image_size),
        "input_ids": torch.full((batch, 1), vocab.task_id("detection")),
        "attention_mask": torch.ones(batch, 1, dtype=torch.long),
        "labels": labels,
    }


def _same_step(eager_model, compiled, batch) -> torch.Tensor:
    """Assert one forward + backward of ``compiled`` gives ``eager_model``'s loss and gradients;
    returns the eager loss."""
    losses = []
    for m in (eager_model, compiled):
        m.zero_grad()
        loss = m(**batch).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(eager_model.named_parameters(), compiled.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    return losses[0]


def test_repeated_blocks_are_the_layers_not_lists_of_linears(model):
    kinds = Counter(type(b).__name__ for b in repeated_blocks(model))
    config = model.config
    assert kinds["T5Block"] == config.text_config.num_layers + config.text_config.num_decoder_layers
    assert kinds["SamVisionLayer"] == config.vision_config.num_hidden_layers
    assert kinds["EvaBlock"] == config.eva_config.depth
    assert "Linear" not in kinds and "Embedding" not in kinds
    # no block listed twice, none inside another listed block
    blocks = repeated_blocks(model)
    inner = {id(m) for b in blocks for m in list(b.modules())[1:]}
    assert len({id(b) for b in blocks}) == len(blocks) and not inner & {id(b) for b in blocks}


def test_compiled_blocks_give_the_eager_loss_and_gradients_with_unchanged_names(model):
    eager_model = copy.deepcopy(model)
    compiled = copy.deepcopy(model)
    names = list(compiled.state_dict())
    # every repeated block, and the LM loss by itself
    assert [type(m).__name__ for m in standalone_regions(compiled)] == ["LMLoss"]
    assert compile_repeated_blocks(compiled, backend="aot_eager") == len(repeated_blocks(compiled)) + 1
    assert compiled.lm_loss._compiled_call_impl is not None
    assert list(compiled.state_dict()) == names  # in place: checkpoints and save_pretrained unchanged
    batch = _batch(model.config)
    loss = _same_step(eager_model, compiled, batch)
    with eager():  # what evaluation uses: the compiled blocks' original forward
        again = compiled(**batch).loss
    torch.testing.assert_close(again, loss, rtol=1e-5, atol=1e-6)


def test_block_stacks_are_the_modules_holding_the_block_lists(model):
    stacks = block_stacks(model)
    names = {id(m): n for n, m in model.named_modules()}
    listed = [names[id(s)] for s in stacks]
    assert "model.text_model.encoder" in listed and "model.text_model.decoder" in listed
    assert "model.towers.sam.vision_encoder" in listed
    # every repeated block is inside exactly one stack, and no stack inside another
    for block in repeated_blocks(model):
        assert sum(any(m is block for m in s.modules()) for s in stacks) == 1
    inner = {id(m) for s in stacks for m in list(s.modules())[1:]}
    assert not inner & {id(s) for s in stacks} and all(s is not model for s in stacks)


def test_compiled_stacks_give_the_eager_loss_and_gradients(model):
    eager_model = copy.deepcopy(model)
    compiled = copy.deepcopy(model)
    count = compile_repeated_blocks(compiled, regions="stacks", backend="aot_eager")
    assert count == len(block_stacks(compiled)) + 1  # the stacks and the LM loss
    assert compiled.model.text_model.encoder._compiled_call_impl is not None
    assert compiled.model.text_model.encoder.block[0]._compiled_call_impl is None
    _same_step(eager_model, compiled, _batch(model.config))
    with pytest.raises(ValueError, match="regions"):
        compile_repeated_blocks(copy.deepcopy(model), regions="layers")


@pytest.mark.parametrize("value", [3, "", ["inductor"]])
def test_compile_option_must_be_a_switch_or_a_backend(value):
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, {"train.compile": value})
    assert load_config(None, {"train.compile": "aot_eager"}).train.compile == "aot_eager"
    assert load_config(None, {"train.compile": True}).train.compile is True


def test_compile_value_is_a_mode_or_a_backend():
    assert compile_options(True) == {}
    assert compile_options("reduce-overhead") == {"mode": "reduce-overhead"}
    assert compile_options("aot_eager") == {"backend": "aot_eager"}
    with pytest.raises(ValueError):
        compile_options("")
    calls = []
    original = torch.compiler.cudagraph_mark_step_begin
    torch.compiler.cudagraph_mark_step_begin = lambda: calls.append(1)
    try:
        step_begin({"mode": "reduce-overhead"})
        step_begin({"backend": "aot_eager"})
    finally:
        torch.compiler.cudagraph_mark_step_begin = original
    assert calls == [1]  # only CUDA-graph trees need the step marked


@pytest.mark.parametrize("value", [0, -8, 2.5, "8x"])
def test_pad_to_multiple_of_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match="train.pad_to_multiple_of"):
        load_config(None, {"train.pad_to_multiple_of": value})
    assert load_config(None, {"train.pad_to_multiple_of": 8}).train.pad_to_multiple_of == 8


def test_recipe_trains_and_evaluates_with_compiled_blocks(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    result = main(
        _args(
            "coco_detection",
            tmp_path / "run",
            cache,
            2,
            "--set",
            "train.compile=aot_eager",
            "--set",
            "train.pad_to_multiple_of=8",
        )
    )
    assert result["step"] == 2 and "AP" in result["val"]["detection"]
    assert "compiled" in capsys.readouterr().out


def test_standalone_regions_compile_without_cuda_graphs():
    from pixtok.training.compilation import _without_graphs

    assert _without_graphs({"mode": "reduce-overhead"}) == {}
    assert _without_graphs({"mode": "max-autotune"}) == {"mode": "max-autotune-no-cudagraphs"}
    assert _without_graphs({"mode": "default", "fullgraph": True}) == {"mode": "default", "fullgraph": True}
    assert _without_graphs({"backend": "aot_eager"}) == {"backend": "aot_eager"}


def test_compiled_lm_loss_equals_the_function_with_gaussian_coordinates():
    from pixtok.model.heads import LMLoss, weighted_lm_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 60, requires_grad=True)
    labels = torch.randint(0, 55, (2, 7))
    labels[0, -2:] = -100
    weights = torch.rand(2, 7)
    args = (labels, weights, 0.1, 55, (20, 30), 2.0)  # 55 real ids of 60 rows, bins 20..49, sigma 2
    expected = weighted_lm_loss(logits, *args)
    (grad,) = torch.autograd.grad(expected, logits)
    module = LMLoss()
    module.compile(backend="aot_eager")
    got = module(logits, *args)
    (got_grad,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, grad)
    assert float(grad[..., 55:].abs().sum()) == 0.0  # padded rows get nothing


def test_no_graphs_compiles_the_matching_blocks_without_cuda_graphs(model, monkeypatch):
    """compile_repeated_blocks(no_graphs=REGEX): the T5 encoder's blocks get the mode without CUDA
    graphs, every other block the mode asked for."""
    from pixtok.training.compilation import compile_repeated_blocks, repeated_blocks

    asked = {}
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: asked.__setitem__(id(self), kw))
    names = {id(m): n for n, m in model.named_modules()}
    compile_repeated_blocks(model, no_graphs=r"text_model\.encoder\.", mode="reduce-overhead")
    blocks = repeated_blocks(model)
    encoder = [b for b in blocks if ".encoder.block." in names[id(b)]]
    assert encoder and all(asked[id(b)] == {} for b in encoder)
    others = [b for b in blocks if b not in encoder]
    assert others and all(asked[id(b)] == {"mode": "reduce-overhead"} for b in others)
