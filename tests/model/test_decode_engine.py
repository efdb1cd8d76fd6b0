"""The fast decode engine against stock transformers T5 (tiny random configs, CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from pixtok.model.decode_engine import (
    TOKENS_PER_OBJECT,
    DetectionRows,
    StaticT5Decoder,
    fast_generate_detection,
    merged_linear_weight,
)
from pixtok.model.decoding import GenerationOptions, decode, grammar_for
from pixtok.model.vocab import EOS_ID, PAD_ID, PixtokVocab

VOCAB = PixtokVocab(base_vocab_size=50, num_bins=40, class_names=("cat", "dog", "car"))
D_MODEL = 32


def tiny_t5(feed_forward_proj: str, tie_word_embeddings: bool, seed: int = 0) -> T5ForConditionalGeneration:
    """T5 v1.0-style (relu, rescaled tied head) or v1.1-style (gated-gelu, no rescale), 3 decoder layers."""
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB.size,
        d_model=D_MODEL,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,  # decode past it: the log-spaced buckets get exercised
        feed_forward_proj=feed_forward_proj,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=tie_word_embeddings,
    )
    return T5ForConditionalGeneration(config).eval()


def encoder_inputs(batch: int = 3, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random encoder states and a mask whose rows have different amounts of padding."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, length, D_MODEL, generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - 2 * row :] = 0
    return states, mask


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine: OpenMP threads only contend, so use one (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ARCHS = [pytest.param("relu", True, id="t5v1.0-relu"), pytest.param("gated-gelu", False, id="t5v1.1-gated")]


def head_scale(t5: T5ForConditionalGeneration) -> float:
    return t5.config.d_model**-0.5 if t5.config.scale_decoder_outputs else 1.0


class GrammarReference(LogitsProcessor):
    """The detection grammar written independently of the engine, as an additive mask on full logits.

    EOS only between objects (and not before ``min_objects``); an object only if it and the EOS after
    it fit in ``budget``; ``<noise>`` never; the EOS offset added after the (unit) temperature.
    """

    def __init__(self, vocab: PixtokVocab, budget: int, min_objects: int = 0, eos_logit_offset: float = 0.0):
        self.vocab, self.budget, self.min_objects = vocab, budget, min_objects
        self.eos_logit_offset = eos_logit_offset

    def bias(self, step: int, batch: int) -> torch.Tensor:
        v = self.vocab
        bias = torch.full((batch, v.size), float("-inf"))
        fits = step + 5 <= self.budget - 1
        if step % 5 == 0:
            if fits:
                bias[:, v.coord_offset : v.coord_offset + v.num_bins] = 0.0
            if step // 5 >= self.min_objects or not fits:
                bias[:, EOS_ID] = self.eos_logit_offset
        elif step % 5 < 4:
            bias[:, v.coord_offset : v.coord_offset + v.num_bins] = 0.0
        else:
            bias[:, v.class_offset : v.class_offset + v.num_classes] = 0.0
        return bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + self.bias(input_ids.shape[1] - 1, scores.shape[0])


@pytest.mark.parametrize(("ff", "tie"), ARCHS)
def test_step_fn_matches_stock_decoder(ff: str, tie: bool) -> None:
    t5 = tiny_t5(ff, tie)
    states, mask = encoder_inputs()
    engine = StaticT5Decoder(t5, max_batch_size=4, max_length=45, max_encoder_length=16)
    engine.prefill(states, mask)
    step = engine.step_fn()
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    ids = torch.zeros(3, 1, dtype=torch.long)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(45):
            logits, hidden = step(ids)
            out = t5.decoder(
                input_ids=ids,
                encoder_hidden_states=states,
                encoder_attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            ref_hidden = out.last_hidden_state[:, -1]
            ref_logits = t5.lm_head(ref_hidden * head_scale(t5))
            assert logits.shape == (3, VOCAB.size) and hidden.shape == (3, D_MODEL)
            torch.testing.assert_close(hidden, ref_hidden, rtol=0, atol=1e-4)
            torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)
            ids = torch.randint(0, VOCAB.size, (3, 1), generator=g)
    # The returned tensors are copies: the next step must not overwrite what a caller kept.
    kept = logits.clone()
    step(ids)
    assert torch.equal(logits, kept)


def reference_greedy(
    t5: T5ForConditionalGeneration,
    states: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    grammar: GrammarReference,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain decoding with stock modules: full-vocabulary logits + grammar mask + argmax."""
    batch = states.shape[0]
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    ids = torch.zeros(batch, 1, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    seqs, scores, hiddens = [], [], []
    with torch.no_grad():
        for t in range(steps):
            out = t5.decoder(
                input_ids=ids,
                encoder_hidden_states=states,
                encoder_attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            hidden = out.last_hidden_state[:, -1]
            logits = t5.lm_head(hidden * head_scale(t5)) + grammar.bias(t, batch)
            probs = logits.softmax(-1)
            token = logits.argmax(-1)
            score = probs.gather(1, token[:, None])[:, 0]
            token = token.masked_fill(done, PAD_ID)
            seqs.append(token)
            scores.append(score.masked_fill(done, 0.0))
            hiddens.append(hidden)
            done = done | (token == EOS_ID)
            ids = token[:, None]
            if bool(done.all()):
                break
    return torch.stack(seqs, 1), torch.stack(scores, 1), torch.stack(hiddens, 1)


@pytest.mark.parametrize(
    ("ff", "tie", "eos_logit_offset"),
    [
        pytest.param("relu", True, 0.0, id="t5v1.0-relu"),
        pytest.param("relu", True, 2.0, id="t5v1.0-relu-eos-offset"),
        pytest.param("gated-gelu", False, 0.0, id="t5v1.1-gated"),
        pytest.param("gated-gelu", False, 12.0, id="t5v1.1-gated-eos-offset"),
    ],
)
def test_fused_greedy_matches_plain_path_and_stock_generate(
    ff: str, tie: bool, eos_logit_offset: float
) -> None:
    t5 = tiny_t5(ff, tie)
    states, mask = encoder_inputs()
    out = fast_generate_detection(  # scores over the grammar's tokens, as stock generate's
        t5,
        states,
        mask,
        VOCAB,
        max_new_tokens=48,
        eos_logit_offset=eos_logit_offset,
        check_every=2,
        rank_against_noise=False,
    )
    grammar = GrammarReference(VOCAB, budget=48, eos_logit_offset=eos_logit_offset)
    ref_seq, ref_scores, ref_hidden = reference_greedy(t5, states, mask, 48, grammar)
    assert torch.equal(out.sequences, ref_seq)
    torch.testing.assert_close(out.token_scores, ref_scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.hidden_states, ref_hidden, rtol=0, atol=1e-4)
    # Stock `generate` with the same grammar as a logits processor writes the same tokens.
    gen = t5.generate(
        encoder_outputs=BaseModelOutput(last_hidden_state=states),
        attention_mask=mask,
        max_new_tokens=48,
        do_sample=False,
        logits_processor=LogitsProcessorList([grammar]),
        # an explicit cache: generate's default one is sized by num_layers, not num_decoder_layers
        past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, gen.sequences[:, 1:])
    stock_probs = torch.stack(gen.scores, 1).softmax(-1).gather(2, gen.sequences[:, 1:, None])[..., 0]
    finished = out.sequences == PAD_ID
    torch.testing.assert_close(out.token_scores[~finished], stock_probs[~finished], rtol=0, atol=1e-5)
    # lengths count up to and including EOS
    for row in range(states.shape[0]):
        eos = (out.sequences[row] == EOS_ID).nonzero()
        assert len(eos) == 1 and int(out.lengths[row]) == int(eos[0]) + 1  # every row ends (budget rule)
    if eos_logit_offset > 0:  # offsets chosen so that rows stop at different steps: padding is exercised
        assert len(set(out.lengths.tolist())) > 1


def test_fused_path_equals_decoding_decode_over_step_fn() -> None:
    """The contract: the fused path gives what the plain loop in decoding.py gives over step_fn."""
    decoding = pytest.importorskip("pixtok.model.decoding")
    t5 = tiny_t5("gated-gelu", False)
    states, mask = encoder_inputs()
    engine = StaticT5Decoder(t5, max_batch_size=3, max_length=41, max_encoder_length=7)
    cases = [(12.0, 0, None, True), (12.0, 2, 5, True), (-1e3, 0, 3, True), (12.0, 0, None, False)]
    for offset, min_objects, max_objects, rank_against_noise in cases:
        options = decoding.GenerationOptions(
            max_new_tokens=41,
            do_sample=False,
            eos_logit_offset=offset,
            min_objects=min_objects,
            max_objects=max_objects,
            rank_against_noise=rank_against_noise,
        )
        engine.prefill(states, mask)
        plain = decoding.decode(engine.step_fn(), decoding.grammar_for("detection", VOCAB), 3, options, "cpu")
        engine.prefill(states, mask)
        fast = engine.generate_detection(
            DetectionRows.from_vocab(VOCAB, rank_against_noise=rank_against_noise),
            max_new_tokens=41,
            eos_logit_offset=offset,
            min_objects=min_objects,
            max_objects=max_objects,
        )
        assert torch.equal(fast.sequences, plain.sequences), (offset, min_objects, max_objects)
        assert torch.equal(fast.lengths, plain.lengths)
        torch.testing.assert_close(fast.token_scores, plain.token_scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(fast.hidden_states, plain.hidden_states, rtol=0, atol=1e-5)


def test_grammar_holds_when_sampling_and_tiny_top_p_is_greedy() -> None:
    t5 = tiny_t5("gated-gelu", False)
    states, mask = encoder_inputs()
    engine = StaticT5Decoder(t5, max_batch_size=3, max_length=60, max_encoder_length=7)
    engine.prefill(states, mask)
    rows = DetectionRows.from_vocab(VOCAB)
    torch.manual_seed(0)
    sampled = engine.generate_detection(
        rows, max_new_tokens=60, do_sample=True, top_p=0.9, eos_logit_offset=2.0
    )
    greedy = engine.generate_detection(rows, max_new_tokens=60)
    assert not torch.equal(sampled.sequences, greedy.sequences[:, : sampled.sequences.shape[1]])
    for seq in sampled.sequences.tolist():
        for t, token in enumerate(seq):
            if token == EOS_ID:
                assert t % TOKENS_PER_OBJECT == 0
                assert all(x == PAD_ID for x in seq[t + 1 :])
                break
            if t % TOKENS_PER_OBJECT < 4:
                assert VOCAB.is_coord(token)
            else:
                assert VOCAB.is_class(token)  # <noise> excluded by default
    assert bool((sampled.token_scores[sampled.sequences != PAD_ID] > 0).all())
    nucleus_of_one = engine.generate_detection(rows, max_new_tokens=60, do_sample=True, top_p=1e-6)
    assert torch.equal(nucleus_of_one.sequences, greedy.sequences)


def test_noise_class_only_when_allowed() -> None:
    rows = DetectionRows.from_vocab(VOCAB, allow_noise_class=True)
    assert rows.allowed(4).tolist() == [*range(VOCAB.class_offset, VOCAB.noise_id), VOCAB.noise_id]
    assert rows.allowed(0).tolist() == [EOS_ID, *range(VOCAB.coord_offset, VOCAB.class_offset)]
    assert rows.choosable(4) == VOCAB.num_classes + 1
    # by default <noise> is in the class position's softmax (the score) but never chosen
    ranked = DetectionRows.from_vocab(VOCAB)
    assert ranked.allowed(4).tolist()[-1] == VOCAB.noise_id
    assert ranked.choosable(4) == VOCAB.num_classes and ranked.choosable(0) == VOCAB.num_bins + 1
    renormalized = DetectionRows.from_vocab(VOCAB, rank_against_noise=False)
    assert VOCAB.noise_id not in renormalized.allowed(4).tolist()
    assert renormalized.choosable(4) == VOCAB.num_classes


@pytest.mark.parametrize("do_sample", [False, True])
def test_noise_ranks_but_is_never_written(do_sample: bool) -> None:
    """A model that calls every object noise: the engine writes the best real class instead, scored
    against noise (low), as ``decoding.decode`` does; with the option off the score renormalizes."""
    t5 = tiny_t5("gated-gelu", False)
    with torch.no_grad():  # the noise row: the best real class's row, scaled up
        t5.lm_head.weight[VOCAB.noise_id] = 4.0 * t5.lm_head.weight[VOCAB.class_offset + 1]
    states, mask = encoder_inputs()
    engine = StaticT5Decoder(t5, max_batch_size=3, max_length=41, max_encoder_length=7)
    scores = {}
    for rank in (True, False):
        engine.prefill(states, mask)
        torch.manual_seed(0)
        out = engine.generate_detection(
            DetectionRows.from_vocab(VOCAB, rank_against_noise=rank), max_new_tokens=41, do_sample=do_sample
        )
        classes = out.sequences[:, 4::TOKENS_PER_OBJECT]
        written = classes[classes != PAD_ID]
        assert len(written) and all(VOCAB.is_class(int(t)) for t in written)
        scores[rank] = out.token_scores[:, 4::TOKENS_PER_OBJECT][classes != PAD_ID]
        if not do_sample:
            engine.prefill(states, mask)
            options = GenerationOptions(max_new_tokens=41, do_sample=False, rank_against_noise=rank)
            plain = decode(engine.step_fn(), grammar_for("detection", VOCAB), 3, options, "cpu")
            assert torch.equal(out.sequences, plain.sequences)
            torch.testing.assert_close(out.token_scores, plain.token_scores, rtol=0, atol=1e-5)
    if not do_sample:  # same tokens; against noise every class score is lower
        assert bool((scores[True] < scores[False]).all())


def test_object_rules_and_early_exit() -> None:
    t5 = tiny_t5("relu", True)
    states, mask = encoder_inputs()
    engine = StaticT5Decoder(t5, max_batch_size=3, max_length=100, max_encoder_length=7)
    engine.prefill(states, mask)
    rows = DetectionRows.from_vocab(VOCAB)
    calls = {"n": 0}
    block = engine._object_block

    def counting_block(do_sample: bool) -> None:
        calls["n"] += 1
        block(do_sample)

    engine._object_block = counting_block
    # An overwhelming EOS offset: EOS at the first boundary after min_objects objects (step 15).
    forced = engine.generate_detection(rows, max_new_tokens=100, min_objects=3, eos_logit_offset=1e4)
    assert forced.sequences.shape == (3, 16)
    assert bool((forced.sequences[:, 15] == EOS_ID).all()) and bool((forced.lengths == 16).all())
    assert calls["n"] == 4  # all ended in the 4th object, and the first check (after 4) stops the loop
    calls["n"] = 0
    immediate = engine.generate_detection(rows, max_new_tokens=100, eos_logit_offset=1e4, check_every=1)
    assert immediate.sequences.tolist() == [[EOS_ID]] * 3 and calls["n"] == 1
    # EOS never chosen voluntarily: max_objects forces it, else the budget does (whole objects only).
    capped = engine.generate_detection(rows, max_new_tokens=100, max_objects=2, eos_logit_offset=-1e4)
    assert bool((capped.sequences[:, 10] == EOS_ID).all()) and capped.sequences.shape == (3, 11)
    budget = engine.generate_detection(rows, max_new_tokens=48, eos_logit_offset=-1e4)
    assert budget.sequences.shape == (3, 46) and bool((budget.sequences[:, 45] == EOS_ID).all())
    assert not bool((budget.sequences[:, :45] == EOS_ID).any())
    # The benchmark setting: min_objects fills the budget, 5 * k + 1 tokens.
    full = engine.generate_detection(rows, max_new_tokens=26, min_objects=5)
    assert full.sequences.shape == (3, 26) and bool((full.sequences[:, 25] == EOS_ID).all())
    assert not bool((full.sequences[:, :25] == EOS_ID).any())


def test_engine_is_reusable_across_images() -> None:
    t5 = tiny_t5("relu", True)
    engine = StaticT5Decoder(t5, max_batch_size=3, max_length=30, max_encoder_length=9)
    first_states, first_mask = encoder_inputs(seed=5)
    second_states, second_mask = encoder_inputs(batch=2, length=9, seed=6)
    fast_generate_detection(t5, first_states, first_mask, VOCAB, max_new_tokens=30, decoder=engine)
    again = fast_generate_detection(t5, second_states, second_mask, VOCAB, max_new_tokens=30, decoder=engine)
    fresh = fast_generate_detection(t5, second_states, second_mask, VOCAB, max_new_tokens=30)
    assert torch.equal(again.sequences, fresh.sequences)
    torch.testing.assert_close(again.token_scores, fresh.token_scores)


def test_lora_is_merged_without_touching_the_model() -> None:
    peft = pytest.importorskip("peft")
    t5 = tiny_t5("gated-gelu", False)
    states, mask = encoder_inputs()
    plain = StaticT5Decoder(t5, max_batch_size=3, max_length=16, max_encoder_length=7)
    lora = peft.get_peft_model(
        t5, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], init_lora_weights=False)
    ).eval()
    engine = StaticT5Decoder(lora, max_batch_size=3, max_length=16, max_encoder_length=7)
    q = lora.get_base_model().decoder.block[0].layer[0].SelfAttention.q
    assert not q.merged  # the engine merged into its own copies only
    assert not torch.allclose(merged_linear_weight(q), q.get_base_layer().weight)
    ids = torch.zeros(3, 1, dtype=torch.long)
    for e in (engine, plain):
        e.prefill(states, mask)
    logits, _ = engine.step_fn()(ids)
    base_logits, _ = plain.step_fn()(ids)
    with torch.no_grad():
        ref = lora(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids).logits[:, -1]
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-4)
    assert (base_logits - ref).abs().max() > 1e-3  # the delta matters, so the check above means something


def test_kernel_choice_and_launch_rule() -> None:
    """kernels='auto' falls back to torch ops off CUDA; PDL needs the Triton path on a GPU; the
    matrix-vector launch rule and its per-shape overrides."""
    from pixtok.model import decode_engine as de

    t5 = tiny_t5("relu", True)
    engine = StaticT5Decoder(t5, max_batch_size=2, max_length=10, max_encoder_length=8)
    assert engine.kernels == "torch" and engine.pdl is False
    with pytest.raises(ValueError, match="pdl=True needs"):
        StaticT5Decoder(t5, 2, 10, 8, pdl=True)
    with pytest.raises(ValueError, match="kernels must be"):
        StaticT5Decoder(t5, 2, 10, 8, kernels="cuda")
    assert de.pdl_supported("cpu") is False
    if de.triton is None:
        return
    assert de._gemv_config(2304, 768, False) == (2, 1024, 4)  # T5-base q|k|v
    assert de._gemv_config(5120, 2048, True) == (1, 2048, 4)  # Flan-T5-XL gated FFN input
    assert de._gemv_config(2048, 5120, False) == (2, 2048, 4)  # K beyond 2048: looped tiles
    de.GEMV_CONFIGS[(2304, 768, False)] = (8, 256, 8)
    try:
        assert de._gemv_config(2304, 768, False) == (8, 256, 8)
    finally:
        del de.GEMV_CONFIGS[(2304, 768, False)]


def test_bad_inputs_fail_with_clear_messages() -> None:
    t5 = tiny_t5("relu", True)
    engine = StaticT5Decoder(t5, max_batch_size=2, max_length=10, max_encoder_length=8)
    with pytest.raises(RuntimeError, match="prefill"):
        engine.step_fn()
    states, mask = encoder_inputs(batch=2, length=8)
    with pytest.raises(ValueError, match="exceeds"):
        engine.prefill(torch.randn(3, 8, D_MODEL))
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        engine.prefill(torch.randn(2, 8, 16))
    bad_mask = mask.clone()
    bad_mask[0] = 0
    with pytest.raises(ValueError, match="at least one position"):
        engine.prefill(states, bad_mask)
    engine.prefill(states, mask)
    with pytest.raises(ValueError, match=r"input_ids must be \(2, 1\)"):
        engine.step_fn()(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate_detection(DetectionRows.from_vocab(VOCAB), max_new_tokens=1000)
    with pytest.raises(ValueError, match="min_objects"):
        engine.generate_detection(
            DetectionRows.from_vocab(VOCAB), max_new_tokens=60, min_objects=3, max_objects=2
        )
    open_vocab = PixtokVocab(base_vocab_size=50, num_bins=40, open_vocabulary=True)
    with pytest.raises(ValueError, match="open-vocabulary"):
        DetectionRows.from_vocab(open_vocab)
    with pytest.raises(TypeError, match="T5ForConditionalGeneration"):
        StaticT5Decoder(torch.nn.Linear(2, 2), 1, 1)


_TRITON_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_decode_engine import StaticT5Decoder, encoder_inputs, tiny_t5
from pixtok.model import decode_engine as de
from test_decode_engine import VOCAB
# few, wide programs (the interpreter pays per program) and several K / key blocks per program
de._gemv_config = lambda n_out, k_in, gated: (64, 16, 4)
de.ATTENTION_CONFIGS.update(self=(4, 4), cross=(4, 4))
ends = []
for ff, tie in [("relu", True), ("gated-gelu", False)]:
    t5 = tiny_t5(ff, tie)
    states, mask = encoder_inputs()
    ref = StaticT5Decoder(t5, 3, 16, 16)
    fused = StaticT5Decoder(t5, 3, 16, 16)
    # kernels="triton" is CUDA-only; under TRITON_INTERPRET=1 the same kernels run on CPU tensors
    fused.kernels = "triton"
    fused._load_weights(t5)
    fused._triton_act = de._TRITON_ACTIVATIONS[t5.config.dense_act_fn]
    fused._layers_fn = fused._decoder_hidden_triton
    steps = []
    for engine in (ref, fused):
        engine.prefill(states, mask)
        steps.append(engine.step_fn())
    ids = torch.zeros(3, 1, dtype=torch.long)
    for _ in range(3):  # position 0, then attention over cached positions
        (a, ha), (b, hb) = steps[0](ids), steps[1](ids)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
        torch.testing.assert_close(hb, ha, rtol=0, atol=1e-5)
        ids = a.argmax(-1, keepdim=True)
    cache_ref, cache_fused = ref.kv_cache[:, :, :3, :, :3], fused.kv_cache[:, :, :3, :, :3]
    torch.testing.assert_close(cache_fused, cache_ref, rtol=0, atol=1e-5)  # the kernel wrote the cache
    # greedy detection through the fused tail (head kernel + pick kernel) against the torch path,
    # with a position table, EOS made likely so that sequences end and pad (once: it is slow here)
    for table in [] if ff == "relu" else [torch.randn(16, t5.config.d_model)]:
        outs = []
        for kernels in ("torch", "triton"):
            engine = StaticT5Decoder(t5, 3, 16, 16, position_embeddings=table)
            if kernels == "triton":
                engine.kernels = "triton"
                engine._load_weights(t5)
                engine._triton_act = de._TRITON_ACTIVATIONS[t5.config.dense_act_fn]
            engine.prefill(states, mask)
            outs.append(engine.generate_detection(
                de.DetectionRows.from_vocab(VOCAB), max_new_tokens=11, min_objects=1, eos_logit_offset=20.0
            ))
        a, b = outs
        assert torch.equal(b.sequences, a.sequences), (a.sequences, b.sequences)
        assert torch.equal(b.lengths, a.lengths)
        torch.testing.assert_close(b.token_scores, a.token_scores, rtol=0, atol=1e-5)
        torch.testing.assert_close(b.hidden_states, a.hidden_states, rtol=0, atol=1e-5)
        ends.append(int((a.lengths < 11).sum()))
assert sum(ends) > 0, "no sequence ended: the EOS / padding path went untested"
print("triton kernels ok")
"""


def test_triton_kernels_match_torch_path_in_the_interpreter() -> None:
    """The fused Triton kernels (GPU path) run in Triton's CPU interpreter against the torch path."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    script = _TRITON_CHECK.format(tests=str(Path(__file__).parent))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "triton kernels ok" in result.stdout
