import json

import pytest

from swaa_ext.config import LayerPlan, SWAAConfig


def modes(plan):
    return [(p.prefill, p.decode) for p in plan]


def test_default_plan_is_all_swa():
    plan = SWAAConfig(window=16).plan(3)
    assert modes(plan) == [("swa", "swa")] * 3
    assert all(isinstance(p, LayerPlan) and p.window == 16 and p.sink == 0 for p in plan)
    assert [p.layer for p in plan] == [0, 1, 2]
    assert all(p.ring for p in plan)


def test_full_layers_explicit_and_shorthand():
    assert modes(SWAAConfig(full_layers=(0, 2)).plan(4)) == [
        ("full", "full"), ("swa", "swa"), ("full", "full"), ("swa", "swa")]
    half = SWAAConfig(full_layers="1::2").plan(6)
    assert [p.layer for p in half if p.prefill == "full"] == [1, 3, 5]
    quarter = SWAAConfig(full_layers="3::4").plan(8)
    assert [p.layer for p in quarter if p.prefill == "full"] == [3, 7]
    bounded = SWAAConfig(full_layers="0:4:2").plan(8)
    assert [p.layer for p in bounded if p.prefill == "full"] == [0, 2]


def test_full_decode_bool_and_layers():
    plan = SWAAConfig(full_decode=True, full_layers=(1,)).plan(3)
    assert modes(plan) == [("swa", "full"), ("full", "full"), ("swa", "full")]
    assert [p.ring for p in plan] == [False, False, False]
    plan = SWAAConfig(full_decode=(2,)).plan(3)
    assert modes(plan) == [("swa", "swa"), ("swa", "swa"), ("swa", "full")]
    assert [p.ring for p in plan] == [True, True, False]


def test_full_tail_only_on_swa_layers():
    plan = SWAAConfig(full_tail=5, full_layers=(0,)).plan(2)
    assert [p.full_tail for p in plan] == [0, 5]


@pytest.mark.parametrize("kwargs,field", [
    ({"window": 0}, "window"), ({"window": -3}, "window"), ({"window": 2.5}, "window"),
    ({"sink": -1}, "sink"), ({"full_tail": -1}, "full_tail"),
    ({"full_layers": (-1,)}, "full_layers"), ({"full_layers": (1, 1)}, "full_layers"),
    ({"full_layers": "x::2"}, "full_layers"), ({"full_layers": "1::0"}, "full_layers"),
    ({"full_layers": 3}, "full_layers"), ({"full_decode": ("a",)}, "full_decode"),
    ({"full_layers": "3:2:1"}, "full_layers"), ({"full_layers": "0:0:1"}, "full_layers"),
])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SWAAConfig(**kwargs)


@pytest.mark.parametrize("kwargs,field", [
    ({"full_layers": (1, 4)}, "full_layers"), ({"full_decode": (4,)}, "full_decode"),
    ({"full_layers": "4::2"}, "full_layers"), ({"full_layers": "0:9:2"}, "full_layers"),
])
def test_layers_outside_the_model_raise_at_plan_time(kwargs, field):
    cfg = SWAAConfig(**kwargs)          # fine until the model size is known
    with pytest.raises(ValueError, match=field):
        cfg.plan(4)


def test_dict_and_json_round_trip(tmp_path):
    for cfg in (SWAAConfig(window=7, sink=2, full_layers="1::2", full_decode=(0, 2), full_tail=3),
                SWAAConfig(window=9, full_layers=(0, 3), full_decode=True)):
        d = cfg.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert SWAAConfig.from_dict(d) == cfg
        path = tmp_path / "cfg.json"
        cfg.save(path)
        assert SWAAConfig.load(path) == cfg
    with pytest.raises(ValueError, match="windw"):
        SWAAConfig.from_dict({"windw": 3})


def test_swaa_toolkit_dict(tmp_path):
    d = {"sliding_window_size": 2048, "keep_first": 100, "force_fa_decode": True,
         "non_sliding_layers": [1, 3, 5]}
    cfg = SWAAConfig.from_swaa_dict(d)
    assert cfg == SWAAConfig(window=2048, sink=100, full_layers=(1, 3, 5), full_decode=True)
    assert cfg.to_swaa_dict() == d
    path = tmp_path / "swaa.json"
    path.write_text(json.dumps(d))
    assert SWAAConfig.load(path) == cfg
    with pytest.raises(ValueError, match="keep_firts"):
        SWAAConfig.from_swaa_dict({"sliding_window_size": 8, "keep_firts": 4})
    with pytest.raises(ValueError, match="sliding_window_size"):
        SWAAConfig.from_swaa_dict({"keep_first": 4})
    with pytest.raises(ValueError, match="force_fa_decode"):
        SWAAConfig.from_swaa_dict({"sliding_window_size": 8, "force_fa_decode": "yes"})
    with pytest.raises(ValueError, match="window"):
        SWAAConfig.from_swaa_dict({"sliding_window_size": 0})
    # non_sliding_layers must be a list: 0 or 3 or "1::2" are not silently read
    for bad in (0, 3, "1::2", False):
        with pytest.raises(ValueError, match="non_sliding_layers"):
            SWAAConfig.from_swaa_dict({"sliding_window_size": 8, "non_sliding_layers": bad})
    assert SWAAConfig.from_swaa_dict({"sliding_window_size": 8,
                                      "non_sliding_layers": None}).full_layers == ()


def test_numpy_layer_indices_are_accepted():
    np = pytest.importorskip("numpy")
    assert SWAAConfig(full_layers=np.array([1, 3])).full_layers == (1, 3)


def test_presets():
    names = SWAAConfig.presets()
    for name in ("naive", "sink", "fa_decode", "half_full", "quarter_full", "sink+fa_decode",
                 "sink+fa_decode+half_full", "fa_decode+quarter_full"):
        assert name in names and names[name]
    assert len(names) == 12
    assert SWAAConfig.preset("naive", window=64) == SWAAConfig(window=64)
    assert SWAAConfig.preset("sink+fa_decode+half_full", window=32, sink=4) == SWAAConfig(
        window=32, sink=4, full_decode=True, full_layers="1::2")
    assert SWAAConfig.preset("sink", window=8).sink == 100
    plan = SWAAConfig.preset("quarter_full", window=8).plan(8)
    assert sum(p.prefill == "full" for p in plan) == 2
    with pytest.raises(ValueError, match="name"):
        SWAAConfig.preset("nope")
    with pytest.raises(ValueError, match="sink"):
        SWAAConfig.preset("naive", sink=4)
    with pytest.raises(ValueError, match="window"):
        SWAAConfig.preset("naive", window=0)


def test_plan_mask_reference_follows_the_plan():
    """swaa_ext.reference.plan_mask: the explicit mask the HF and training tests compare with."""
    import torch

    from swaa_ext.reference import plan_mask

    plan = SWAAConfig(window=2, sink=1, full_tail=1).plan(1)[0]  # SWA prefill and decode
    got = plan_mask(plan, 6, prompt_len=4).int().tolist()
    assert got == [[1, 0, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0],   # last prompt token (full_tail=1): everything
                   [1, 0, 0, 1, 1, 0],   # generated: sink + window
                   [1, 0, 0, 0, 1, 1]]
    full_decode = SWAAConfig(window=2, full_decode=True).plan(1)[0]
    assert plan_mask(full_decode, 5, prompt_len=3)[3:].all(dim=0)[:4].all()
    assert torch.equal(plan_mask(full_decode, 5, prompt_len=3)[4], torch.ones(5, dtype=torch.bool))
