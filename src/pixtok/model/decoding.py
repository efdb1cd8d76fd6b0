"""Grammar-constrained decoding: the loop every pixtok task generates with.

The model is reached through one callable, ``step_fn(input_ids (B, 1) long) -> (logits (B, V) float,
hidden (B, D) float)``, that keeps its own KV cache; this module owns everything else: which tokens
are legal at each step (the *grammar*), temperature, the EOS logit offset, nucleus sampling or
argmax, the per-token probabilities Pix2Seq ranks detections by, and early stopping.

A grammar is a small deterministic automaton over token ids, stored as tensors so that each step
costs one gather per table, whatever the batch size:

* ``allowed`` (S, V) bool — the tokens legal in state ``s``; the step's mask is ``allowed[state]``
  with ``state`` a (B,) long tensor, applied as one ``masked_fill``.
* ``next_state`` (S, V) long — the state after emitting a token.
* ``cost_after`` (S, V) long — the fewest further tokens needed to reach the end after emitting a
  token; near the end of the ``max_new_tokens`` budget only tokens that can still finish are legal,
  so every sequence ends in EOS with whole objects, never cut mid-object.

Detection (closed set) has the (5 + 1, V) table of Pix2Seq: states 0–3 are the coordinates
``ymin xmin ymax xmax`` (EOS is legal only in state 0, between objects), state 4 the class, state 5
"done" (only padding). **The** ``<noise>`` **class is never generated**: it exists to teach the model
to reject bad boxes during training. It still takes part in the class token's *score* (the
grammar's ``score_only`` table): an object the model calls noise keeps its most likely real class,
ranked by that class's probability against noise, so it falls to the bottom of the ranking
(Pix2Seq's "altered inference"; ``GenerationOptions.rank_against_noise``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .vocab import EOS_ID, PAD_ID, PixtokVocab, task_index

StepFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_UNREACHABLE = 1 << 30


@dataclass(frozen=True)
class Grammar:
    """A token automaton (see the module docstring). Build it with :func:`grammar_for`.

    Args:
        task (`str`): the task it constrains.
        allowed (`torch.Tensor`): (S, V) bool, legal tokens per state.
        next_state (`torch.Tensor`): (S, V) long, transition table (illegal entries point at ``done``).
        cost_after (`torch.Tensor`): (S, V) long, fewest tokens still needed after a token (EOS → 0).
        completes_object (`torch.Tensor`): (S,) bool, leaving this state finishes one object.
        done_state (`int`): the absorbing state after EOS (only ``PAD_ID`` legal).
        start_state (`int`, *optional*, defaults to 0).
        score_only (`torch.Tensor`, *optional*): (S, V) bool, tokens never chosen that still take part
            in the softmax a chosen token's score is read from (detection's ``<noise>`` at the class).
    """

    task: str
    allowed: torch.Tensor
    next_state: torch.Tensor
    cost_after: torch.Tensor
    completes_object: torch.Tensor
    done_state: int
    start_state: int = 0
    score_only: torch.Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return self.allowed.shape[1]

    @property
    def min_length(self) -> int:
        """Fewest tokens (EOS included) of any complete sequence."""
        return int(self.cost_after[self.start_state].min()) + 1

    def mask(self, state: torch.Tensor) -> torch.Tensor:
        """Legal tokens for each sequence: ``state`` (B,) long → (B, V) bool."""
        return self.allowed[state]

    def advance(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """States after emitting ``tokens``: (B,) long, (B,) long → (B,) long."""
        return self.next_state[state, tokens]

    def to(self, device: torch.device | str) -> Grammar:
        return replace(
            self,
            allowed=self.allowed.to(device),
            next_state=self.next_state.to(device),
            cost_after=self.cost_after.to(device),
            completes_object=self.completes_object.to(device),
            score_only=None if self.score_only is None else self.score_only.to(device),
        )

    def padded_to(self, vocab_size: int) -> Grammar:
        """The same grammar over a wider vocabulary (an LM head padded past the last real id)."""
        extra = vocab_size - self.vocab_size
        if extra < 0:
            raise ValueError(
                f"logits have {vocab_size} entries but the {self.task} grammar needs {self.vocab_size}"
            )
        if extra == 0:
            return self
        s = self.allowed.shape[0]
        pad_bool = self.allowed.new_zeros((s, extra))
        pad_state = self.next_state.new_full((s, extra), self.done_state)
        pad_cost = self.cost_after.new_full((s, extra), _UNREACHABLE)
        return replace(
            self,
            allowed=torch.cat([self.allowed, pad_bool], dim=1),
            next_state=torch.cat([self.next_state, pad_state], dim=1),
            cost_after=torch.cat([self.cost_after, pad_cost], dim=1),
            score_only=None if self.score_only is None else torch.cat([self.score_only, pad_bool], dim=1),
        )


def _build(
    task: str, edges: list[list[tuple[torch.Tensor, int]]], completes: Sequence[int], v: int
) -> Grammar:
    """Assemble the tables from ``edges[s] = [(token ids, next state), ...]``; the last state is done."""
    num_states = len(edges) + 1
    done = num_states - 1
    allowed = torch.zeros(num_states, v, dtype=torch.bool)
    next_state = torch.full((num_states, v), done, dtype=torch.long)
    for s, out in enumerate(edges):
        for ids, target in out:
            allowed[s, ids] = True
            next_state[s, ids] = target
    allowed[done, PAD_ID] = True
    # Fewest tokens from each state to the end (shortest path; EOS leads to done at cost 1).
    to_end = torch.full((num_states,), _UNREACHABLE, dtype=torch.long)
    to_end[done] = 0
    for _ in range(num_states):
        via = torch.where(allowed, 1 + to_end[next_state], torch.full_like(next_state, _UNREACHABLE))
        via[done] = _UNREACHABLE
        to_end = torch.minimum(to_end, via.min(dim=1).values)
    cost_after = torch.where(allowed, to_end[next_state], torch.full_like(next_state, _UNREACHABLE))
    completes_object = torch.zeros(num_states, dtype=torch.bool)
    completes_object[list(completes)] = True
    return Grammar(task, allowed, next_state, cost_after, completes_object, done_state=done)


def grammar_for(task: str, vocab: PixtokVocab, banned_ids: Sequence[int] = ()) -> Grammar:
    """The decoding grammar of ``task`` over ``vocab`` (built once per arguments, then cached).

    See :func:`_grammar_for` for the languages.
    """
    return _grammar_for(task, vocab, tuple(sorted(int(i) for i in banned_ids)))


@functools.lru_cache(maxsize=32)
def _grammar_for(task: str, vocab: PixtokVocab, banned_ids: tuple[int, ...]) -> Grammar:
    """The decoding grammar of ``task`` over ``vocab``.

    * ``detection``: ``([ymin xmin ymax xmax] class)* EOS``; class = ``<cls_c>`` (never ``<noise>``,
      which is ``score_only`` there), or with ``vocab.open_vocabulary`` one or more text pieces
      (after them: the next ``ymin`` or EOS).
    * ``referring``: exactly four coordinates, then EOS.
    * ``caption``, ``region_caption``, ``dense_caption`` (one region caption per proposal): one or
      more text pieces, then EOS — no coordinate, class, noise or task tokens.

    Args:
        task: a name from :data:`~.vocab.TASKS` (``panoptic`` is not token-decoded).
        vocab: the token space.
        banned_ids: base-vocabulary ids that are never text (e.g. T5's ``<extra_id_*>`` sentinels).

    Returns:
        A CPU :class:`Grammar` of width ``vocab.size``; move it with ``.to(device)``.
    """
    task_index(task)
    v = vocab.size
    coords = torch.arange(vocab.coord_offset, vocab.class_offset)
    text_mask = torch.zeros(v, dtype=torch.bool)
    text_mask[PAD_ID + 3 : vocab.base_vocab_size] = True  # ids above pad/eos/unk
    text_mask[torch.as_tensor(list(banned_ids), dtype=torch.long)] = False
    text = text_mask.nonzero().squeeze(1)
    eos = torch.tensor([EOS_ID])
    if task == "detection":
        if vocab.open_vocabulary:
            # 0 boundary, 1-3 coords, 4 first name piece, 5 more pieces | next ymin | EOS
            edges = [
                [(coords, 1), (eos, 6)],
                [(coords, 2)],
                [(coords, 3)],
                [(coords, 4)],
                [(text, 5)],
                [(text, 5), (coords, 1), (eos, 6)],
            ]
            return _build(task, edges, completes=[4], v=v)
        if vocab.num_classes == 0:
            raise ValueError("closed-set detection needs class_names (or open_vocabulary=True)")
        classes = torch.arange(vocab.class_offset, vocab.noise_id)
        edges = [[(coords, 1), (eos, 5)], [(coords, 2)], [(coords, 3)], [(coords, 4)], [(classes, 0)]]
        grammar = _build(task, edges, completes=[4], v=v)
        score_only = torch.zeros_like(grammar.allowed)
        score_only[4, vocab.noise_id] = True
        return replace(grammar, score_only=score_only)
    if task == "referring":
        edges = [[(coords, 1)], [(coords, 2)], [(coords, 3)], [(coords, 4)], [(eos, 5)]]
        return _build(task, edges, completes=[3], v=v)
    if task in ("caption", "region_caption", "dense_caption"):
        edges = [[(text, 1)], [(text, 1), (eos, 2)]]
        return _build(task, edges, completes=[], v=v)
    raise ValueError(f"task {task!r} has no token grammar (panoptic is decoded by bit diffusion)")


@dataclass(frozen=True)
class GenerationOptions:
    """How :func:`decode` picks tokens; ``None`` fields take the task's default (:meth:`for_task`).

    Args:
        max_new_tokens (`int`, *optional*): step budget; detection defaults to
            ``5 * max_objects + 1``, referring to 5, text tasks to 64.
        do_sample (`bool`, *optional*): nucleus sampling (detection default, as Pix2Seq) or argmax
            (default for text tasks and referring).
        top_p (`float`, *optional*): nucleus mass; 0.4 for detection (Pix2Seq's configs), else 0.9.
        temperature (`float`, *optional*, defaults to 1.0): logits are divided by it (> 0).
        eos_logit_offset (`float`, *optional*, defaults to 0.0): added to the EOS logit; negative
            values make sequences longer (more objects: recall), positive shorter (precision).
        min_objects (`int`, *optional*, defaults to 0): detection only — EOS is illegal before this
            many objects (unless the budget could no longer fit another one).
        max_objects (`int`, *optional*): detection only — EOS is forced after this many objects
            (default: the config's ``max_objects``, 100).
        rank_against_noise (`bool`, *optional*, defaults to `True`): detection only — a class token's
            score is its probability in a softmax that also holds ``<noise>`` (never chosen), so an
            object the model calls noise keeps its most likely real class with a low score (Pix2Seq's
            altered inference); ``False`` renormalizes the score over the real classes. Tokens and
            sampling are the same either way.
        coordinate_window (`int`, *optional*, defaults to 0): when > 0, each generated coordinate
            token also gets a sub-bin offset: the mean bin of its softmax over the ``2w + 1`` bins
            around it, minus its own bin (:func:`coordinate_offsets`; ``PixtokGenerateOutput.
            coordinate_offsets``, which the processor's detection post-processing adds). Tokens are
            unchanged; only the boxes read from them move, by less than ``w`` bins.
    """

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    top_p: float | None = None
    temperature: float = 1.0
    eos_logit_offset: float = 0.0
    min_objects: int = 0
    max_objects: int | None = None
    rank_against_noise: bool = True
    coordinate_window: int = 0

    def for_task(self, task: str, max_objects: int = 100) -> GenerationOptions:
        """Fill the ``None`` fields with ``task``'s defaults (``max_objects`` from the config)."""
        detection = task == "detection"
        objects = self.max_objects if self.max_objects is not None else max_objects
        if self.max_new_tokens is not None:
            budget = self.max_new_tokens
        elif detection:
            budget = 5 * objects + 1
        elif task == "referring":
            budget = 5
        else:
            budget = 64
        return replace(
            self,
            max_new_tokens=budget,
            do_sample=detection if self.do_sample is None else self.do_sample,
            top_p=(0.4 if detection else 0.9) if self.top_p is None else self.top_p,
            max_objects=objects if detection else self.max_objects,
        )

    def validate(self) -> None:
        if self.max_new_tokens is None or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.coordinate_window, int) or self.coordinate_window < 0:
            raise ValueError(f"coordinate_window must be an int >= 0, got {self.coordinate_window!r}")
        if self.min_objects < 0 or (self.max_objects is not None and self.max_objects < self.min_objects):
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )


@dataclass
class DecodeResult:
    """What :func:`decode` returns (all on the decode device).

    Attributes:
        sequences: (B, T) long, generated ids without the start token, ``PAD_ID`` after EOS.
        token_scores: (B, T) float, probability of each chosen token under the grammar-masked,
            temperature-scaled softmax (EOS offset included, before nucleus truncation; with
            ``rank_against_noise`` the class softmax also holds ``<noise>``); 0 on padding.
        hidden_states: (B, T, D) float, ``hidden_states[:, t]`` is the state that chose token ``t``.
        lengths: (B,) long, tokens up to and including EOS.
    """

    sequences: torch.Tensor
    token_scores: torch.Tensor
    hidden_states: torch.Tensor
    lengths: torch.Tensor


def _nucleus_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p`` (the top one always stays)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


@torch.no_grad()
def decode(
    step_fn: StepFn,
    grammar: Grammar,
    batch_size: int,
    options: GenerationOptions,
    device: torch.device | str,
    start_id: int = PAD_ID,
    generator: torch.Generator | None = None,
) -> DecodeResult:
    """Generate ``batch_size`` sequences under ``grammar``.

    Args:
        step_fn: ``(B, 1) long → ((B, V) logits, (B, D) hidden)``; called once per step with the
            previous token (``start_id`` first, ``PAD_ID`` for sequences that already ended).
        grammar: from :func:`grammar_for` (moved to ``device`` and widened to V here if needed).
        batch_size: B.
        options: resolved options (:meth:`GenerationOptions.for_task`); ``None`` sampling fields mean
            argmax / top_p 1.
        device: where the loop's tensors live (the model's device).
        start_id: the decoder start token (T5: 0).
        generator: optional RNG for reproducible sampling.

    Returns:
        A :class:`DecodeResult`; T is the number of steps taken (≤ ``max_new_tokens``; the loop stops
        as soon as every sequence has emitted EOS).
    """
    options.validate()
    budget = int(options.max_new_tokens)
    if budget < grammar.min_length:
        raise ValueError(
            f"max_new_tokens={budget} cannot hold a {grammar.task} sequence ({grammar.min_length})"
        )
    grammar = grammar.to(device)
    done_state = grammar.done_state
    state = torch.full((batch_size,), grammar.start_state, dtype=torch.long, device=device)
    objects = torch.zeros(batch_size, dtype=torch.long, device=device)
    ids = torch.full((batch_size, 1), start_id, dtype=torch.long, device=device)
    eos_allowed = grammar.allowed[:, EOS_ID]  # (S,) states between objects
    tail = int(grammar.cost_after[grammar.allowed].max()) + 1
    counts_objects = bool(grammar.completes_object.any()) and grammar.task == "detection"
    rank_against_noise = options.rank_against_noise and grammar.score_only is not None
    # Every object takes at least 5 tokens: when the budget cannot hold more than max_objects of
    # them, the budget rule already enforces the limit and the per-step object check is skipped.
    max_objects = options.max_objects
    if max_objects is not None and budget < 5 * (max_objects + 1) + 1:
        max_objects = None
    tokens_out, scores_out, hidden_out = [], [], []
    for step in range(budget):
        logits, hidden = step_fn(ids)
        if step == 0 and logits.shape[-1] != grammar.vocab_size:
            grammar = grammar.padded_to(logits.shape[-1])
        legal = grammar.mask(state)
        remaining = budget - step - 1
        if remaining < tail:  # only tokens from which the sequence can still end in time
            legal = legal & (grammar.cost_after[state] <= remaining)
        if counts_objects and (options.min_objects or max_objects is not None):
            boundary = eos_allowed[state]
            if options.min_objects:
                block_eos = boundary & (objects < options.min_objects) & (remaining >= tail)
                legal[:, EOS_ID] &= ~block_eos
            if max_objects is not None:
                force_eos = boundary & (objects >= max_objects)
                only_eos = torch.zeros_like(legal[0])
                only_eos[EOS_ID] = True
                legal = torch.where(force_eos[:, None], only_eos, legal)
        logits = logits.float() / options.temperature
        if options.eos_logit_offset:
            logits[:, EOS_ID] += options.eos_logit_offset
        probs = logits.masked_fill(~legal, float("-inf")).softmax(dim=-1)
        if options.do_sample:
            sample_probs = _nucleus_filter(probs, options.top_p) if options.top_p is not None else probs
            chosen = torch.multinomial(sample_probs, 1, generator=generator).squeeze(1)
        else:
            chosen = probs.argmax(dim=-1)
        finished = state == done_state
        chosen = chosen.masked_fill(finished, PAD_ID)
        if rank_against_noise:  # the score's softmax also holds tokens that are never chosen
            scored = legal | grammar.score_only[state]
            probs = logits.masked_fill(~scored, float("-inf")).softmax(dim=-1)
        score = probs.gather(1, chosen[:, None]).squeeze(1).masked_fill(finished, 0.0)
        objects = objects + grammar.completes_object[state].long()
        state = grammar.advance(state, chosen)
        tokens_out.append(chosen)
        scores_out.append(score)
        hidden_out.append(hidden)
        ids = chosen[:, None]
        if bool((state == done_state).all()):
            break
    sequences = torch.stack(tokens_out, dim=1)
    lengths = (sequences != PAD_ID).sum(dim=1)
    return DecodeResult(
        sequences=sequences,
        token_scores=torch.stack(scores_out, dim=1),
        hidden_states=torch.stack(hidden_out, dim=1),
        lengths=lengths,
    )


def coordinate_offsets(
    sequences: torch.Tensor,
    states: torch.Tensor,
    bin_logits: Callable[[torch.Tensor], torch.Tensor],
    coord_offset: int,
    num_bins: int,
    window: int,
) -> torch.Tensor:
    """Sub-bin offsets of generated coordinate tokens (``GenerationOptions.coordinate_window``).

    A coordinate token names one bin; its softmax usually spreads over the bins around it. The
    offset is the mean bin of that softmax restricted to the ``2 * window + 1`` bins centred on the
    chosen one (bins past either end left out), minus the chosen bin: 0 for a symmetric spread,
    towards the heavier side otherwise, always within ``(-window, window)``.

    Args:
        sequences: (B, T) generated ids.
        states: (B, T, D) the decoder states that chose them (``DecodeResult.hidden_states``).
        bin_logits: (N, D) states → (N, num_bins) logits of the coordinate tokens, in bin order.
        coord_offset, num_bins: the vocabulary's coordinate ids ``[coord_offset, coord_offset + num_bins)``.
        window: bins on each side; 0 gives zeros.

    Returns:
        (B, T) float32 offsets in bins; 0 at every non-coordinate position.
    """
    offsets = torch.zeros(sequences.shape, dtype=torch.float32, device=sequences.device)
    is_coord = (sequences >= coord_offset) & (sequences < coord_offset + num_bins)
    if window <= 0 or not bool(is_coord.any()):
        return offsets
    bins = sequences[is_coord] - coord_offset  # (N,)
    steps = torch.arange(-window, window + 1, device=sequences.device)
    neighbours = bins[:, None] + steps  # (N, 2w + 1)
    inside = (neighbours >= 0) & (neighbours < num_bins)
    logits = bin_logits(states[is_coord]).float()
    window_logits = logits.gather(1, neighbours.clamp(0, num_bins - 1)).masked_fill(~inside, float("-inf"))
    offsets[is_coord] = (window_logits.softmax(dim=-1) * steps.float()).sum(dim=-1)
    return offsets


__all__ = [
    "DecodeResult",
    "GenerationOptions",
    "Grammar",
    "StepFn",
    "coordinate_offsets",
    "decode",
    "grammar_for",
]
