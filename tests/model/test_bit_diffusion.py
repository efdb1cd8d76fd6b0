"""Bit codec, schedule, DDIM and training helpers of Pix2Seq-D (pixtok.model.bit_diffusion)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixtok.model.bit_diffusion import (
    PanopticBitCodec,
    analog_to_bits,
    area_loss_weights,
    bits_to_analog,
    bits_to_int,
    cosine_gamma,
    ddim_sample,
    ddim_times,
    get_schedule,
    int_to_bits,
    predict_noise,
    q_sample,
    randomize_instance_ids,
)


def test_int_bits_msb_first() -> None:
    assert int_to_bits(torch.tensor([6]), 4).tolist() == [[0, 1, 1, 0]]
    assert bits_to_int(torch.tensor([[1, 0, 0, 1]])).tolist() == [9]


def test_round_trip_exhaustive_tiny_width() -> None:
    codec = PanopticBitCodec(class_bits=3, instance_bits=4, scale=0.1)
    cls, ins = torch.meshgrid(torch.arange(8), torch.arange(16), indexing="ij")
    cls, ins = cls.reshape(1, 8, 16), ins.reshape(1, 8, 16)  # every (class, id) pair once
    analog = codec.encode(cls, ins)
    assert analog.shape == (1, 7, 8, 16)
    assert analog.unique().tolist() == pytest.approx([-0.1, 0.1])
    got_cls, got_ins = codec.decode(analog)
    assert torch.equal(got_cls, cls) and torch.equal(got_ins, ins)
    # all 128 codes are distinct
    assert len(torch.unique(analog.reshape(7, -1).T, dim=0)) == 128


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=40),
    noise=st.floats(0.0, 0.0999),
)
def test_round_trip_property_16_bits(pairs: list[tuple[int, int]], noise: float) -> None:
    codec = PanopticBitCodec(class_bits=8, instance_bits=8, scale=0.1)
    cls = torch.tensor([p[0] for p in pairs]).reshape(1, 1, -1)
    ins = torch.tensor([p[1] for p in pairs]).reshape(1, 1, -1)
    analog = codec.encode(cls, ins)
    # any perturbation smaller than b in magnitude keeps the sign, hence the value
    jitter = (torch.rand(analog.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * noise
    got_cls, got_ins = codec.decode(analog + jitter * analog.sign() * -1)
    assert torch.equal(got_cls, cls) and torch.equal(got_ins, ins)


def test_out_of_range_values_are_refused() -> None:
    codec = PanopticBitCodec(class_bits=2, instance_bits=2)
    ok = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="instance map.*fit in 2 bits"):
        codec.encode(ok, torch.full((1, 2, 2), 4))
    with pytest.raises(ValueError, match="class map"):
        codec.encode(torch.full((1, 2, 2), -1), ok)
    with pytest.raises(ValueError, match="differ"):
        codec.encode(ok, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="bit channels"):
        codec.decode(torch.zeros(1, 5, 2, 2))


def test_analog_threshold() -> None:
    bits = torch.tensor([0, 1, 1, 0])
    assert torch.equal(analog_to_bits(bits_to_analog(bits, 0.1)), bits)
    assert analog_to_bits(torch.tensor([0.0])).item() == 0  # zero is a 0 bit, by definition


def test_cosine_schedule_shape() -> None:
    t = torch.linspace(0, 1, 101)
    g = cosine_gamma(t)
    assert g[0] > 0.999 and g[-1] < 1e-5
    assert (g[1:] <= g[:-1]).all() and (g[1:-1] < g[:-2]).all()
    assert abs(float(cosine_gamma(torch.tensor(0.5))) - 0.5) < 0.02  # cosine: half signal near t=0.5
    assert get_schedule("cosine") is cosine_gamma
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_schedule("linear-ish")


def test_q_sample_statistics_and_noise_recovery() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = bits_to_analog(torch.randint(0, 2, (4, 6, 32, 32), generator=gen), 0.1)
    gamma = torch.tensor([0.99, 0.5, 0.1, 1e-4])
    noise = torch.randn(x0.shape, generator=gen)
    xt = q_sample(x0, gamma, noise)
    assert torch.allclose(predict_noise(xt, x0, gamma), noise, atol=1e-4)
    # variance of x_t = gamma * b^2 + (1 - gamma)
    var = xt.var(dim=(1, 2, 3))
    assert torch.allclose(var, gamma * 0.01 + (1 - gamma), rtol=0.1)


def test_ddim_times_td() -> None:
    assert ddim_times(4) == [(1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)]
    shifted = ddim_times(4, td=1.0)
    assert [round(b, 4) for _, b in shifted] == [0.5, 0.25, 0.0, 0.0]
    with pytest.raises(ValueError):
        ddim_times(0)
    with pytest.raises(ValueError):
        ddim_times(3, td=3)


def test_ddim_with_oracle_denoiser_recovers_target() -> None:
    codec = PanopticBitCodec(class_bits=4, instance_bits=4)
    gen = torch.Generator().manual_seed(1)
    cls = torch.randint(0, 16, (2, 8, 8), generator=gen)
    ins = torch.randint(0, 16, (2, 8, 8), generator=gen)
    target = codec.encode(cls, ins)
    seen_t: list[float] = []
    seen_cond: list[float] = []

    def oracle(x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen_t.append(float(t[0]))
        seen_cond.append(float(cond.abs().max()))
        return target * 3  # over-confident: the sampler clips to [-b, b]

    out = ddim_sample(oracle, target.shape, num_steps=5, td=0.5, scale=0.1, generator=gen)
    assert torch.allclose(out, target)
    got_cls, got_ins = codec.decode(out)
    assert torch.equal(got_cls, cls) and torch.equal(got_ins, ins)
    assert seen_t == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert seen_cond[0] == 0.0 and seen_cond[1] == pytest.approx(0.1)  # self-conditioning fed back


def test_ddim_without_self_condition_feeds_zeros() -> None:
    conds: list[float] = []

    def denoise(x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conds.append(float(cond.abs().max()))
        return torch.ones_like(x_t)

    ddim_sample(denoise, (1, 2, 4, 4), num_steps=3, self_condition=False)
    assert conds == [0.0, 0.0, 0.0]


def test_randomize_instance_ids_keeps_partition() -> None:
    inst = torch.tensor([[[0, 1, 1, 2], [0, 3, 3, 2]]])
    gen = torch.Generator().manual_seed(0)
    draws = set()
    for _ in range(20):
        out = randomize_instance_ids(inst, 15, gen)
        assert ((out == 0) == (inst == 0)).all()
        for a in (1, 2, 3):
            vals = out[inst == a].unique()
            assert len(vals) == 1 and 1 <= int(vals) <= 15
        assert len(out[inst != 0].unique()) == 3
        draws.add(tuple(out.flatten().tolist()))
    assert len(draws) > 5  # actually random
    with pytest.raises(ValueError, match="at most 2"):
        randomize_instance_ids(inst, 2, gen)


def test_area_loss_weights() -> None:
    cls = torch.zeros(1, 4, 4, dtype=torch.long)
    inst = torch.zeros(1, 4, 4, dtype=torch.long)
    inst[0, 0, 0] = 1  # a one-pixel segment next to a 15-pixel one
    w1 = area_loss_weights(cls, inst, power=1.0)
    assert w1.mean().item() == pytest.approx(1.0)
    assert w1[inst == 1].sum().item() == pytest.approx(w1[inst == 0].sum().item())  # equal total per segment
    w0 = area_loss_weights(cls, inst, power=0.0)
    assert torch.equal(w0, torch.ones_like(w0))
    w_half = area_loss_weights(cls, inst, power=0.5)
    assert w_half[0, 0, 0] > w_half[0, 1, 1]
    with pytest.raises(ValueError):
        area_loss_weights(cls, inst, power=-1)


def test_pack_matches_bit_layout_and_round_trips() -> None:
    codec = PanopticBitCodec(class_bits=3, instance_bits=4)
    cls, ins = torch.meshgrid(torch.arange(8), torch.arange(16), indexing="ij")
    ids = codec.pack(cls, ins)
    assert len(ids.unique()) == 128 and int(ids.max()) == 127
    # the packed id's digits are exactly the bit channels (class digits first)
    assert torch.equal(int_to_bits(ids, 7).movedim(-1, 0), codec.encode_bits(cls[None], ins[None])[0])
    got_cls, got_ins = codec.unpack(ids)
    assert torch.equal(got_cls, cls) and torch.equal(got_ins, ins)
    with pytest.raises(ValueError, match=r"instance map values must lie in \[0, 15\]"):
        codec.pack(cls, ins + 1)
    with pytest.raises(ValueError, match="packed panoptic ids"):
        codec.unpack(torch.tensor([128]))
