"""Hugging Face integration on tiny float32 models built from configs (CPU)."""
import math
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM,  # noqa: E402
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

from swaa_ext import SWAAConfig, hf  # noqa: E402
from swaa_ext.reference import masked_attention, plan_mask  # noqa: E402

VOCAB = 101
NUM_LAYERS = 4
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=NUM_LAYERS,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
}

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def tiny_model(arch="llama", seed=0, attn="sdpa", **overrides):
    config_cls, model_cls, extra = ARCHS[arch]
    config = config_cls(**{**COMMON, **extra, **overrides})
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # generated tokens must not stop early on eos
    model.generation_config.eos_token_id = None
    return model


def random_ids(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def generate(model, ids, cache=None, attention_mask=None, new=6, **kw):
    kw.setdefault("output_logits", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(ids, attention_mask=attention_mask, past_key_values=cache,
                             max_new_tokens=new, min_new_tokens=new, do_sample=kw.pop("do_sample", False),
                             pad_token_id=0, return_dict_in_generate=True, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1) if out.logits else None


# ----------------------------------------------------------------------------------------------
# an independent reference: explicit masks from the plan, no cache, the whole sequence each step
_REF = {"cfg": None, "prompt_len": None}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         **kwargs):
    plan = _REF["cfg"].plan(NUM_LAYERS)[module.layer_idx]
    B, Hq, L, D = query.shape
    assert key.shape[2] == L, "the reference runs without cache"
    pads = [0] * B if attention_mask is None else (L - attention_mask.sum(-1)).tolist()
    P = _REF["prompt_len"] if _REF["prompt_len"] is not None else L
    mask = torch.zeros(B, 1, L, L, dtype=torch.bool)
    for b, pad in enumerate(pads):
        n, prompt = L - pad, P - pad
        mask[b, 0, pad:, pad:] = plan_mask(plan, n, prompt)
        mask[b, 0, range(pad), range(pad)] = True  # padding queries: anything finite
    out = masked_attention(query, key, value, mask, scaling or 1 / math.sqrt(D))
    return out.transpose(1, 2), None


AttentionInterface.register("swaa_test_ref", _reference_attention)
AttentionMaskInterface.register("swaa_test_ref", lambda *a, attention_mask=None, **k: attention_mask)


def reference_generate(model, cfg, ids, attention_mask=None, new=6):
    """Greedy decoding with the explicit-mask reference; returns (tokens, logits per step)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("swaa_test_ref")
    _REF.update(cfg=cfg, prompt_len=ids.shape[1])
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    seq, logits = ids, []
    try:
        with torch.no_grad():
            for _ in range(new):
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                step = model(seq, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
                logits.append(step)
                nxt = step.argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], 1)
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    finally:
        model.set_attn_implementation(previous)
        _REF.update(cfg=None, prompt_len=None)
    return seq[:, ids.shape[1]:], torch.stack(logits, 1)


def small_preset(name, window=5):
    return SWAAConfig.preset(name, window=window, sink=2 if "sink" in name else None)


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_long_window_equals_unpatched_and_remove_restores(arch):
    model = tiny_model(arch)
    ids = random_ids(2, 23, seed=1)
    config_before = model.config.to_dict()
    with torch.no_grad():
        before = model(ids).logits
        hf.apply_swaa(model, SWAAConfig(window=64))
        assert model.config._attn_implementation == "swaa"
        assert hf.applied_config(model) == SWAAConfig(window=64)
        patched = model(ids).logits
        hf.remove_swaa(model)
        after = model(ids).logits
    torch.testing.assert_close(patched, before, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(after, before)
    assert not hf.is_swaa_applied(model) and hf.applied_config(model) is None
    assert model.config.to_dict() == config_before


@pytest.mark.parametrize("arch", list(ARCHS))
def test_swa_changes_logits_beyond_the_window(arch):
    model = tiny_model(arch)
    ids = random_ids(1, 20, seed=2)
    with torch.no_grad():
        full = model(ids).logits
        hf.apply_swaa(model, SWAAConfig(window=4))
        swa = model(ids).logits
    torch.testing.assert_close(swa[:, :4], full[:, :4], atol=1e-5, rtol=1e-5)
    assert (swa[:, 4:] - full[:, 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_all_layers_swa_equals_hf_sliding_window(attn):
    W = 6
    model = tiny_model("mistral", attn=attn, sliding_window=W)
    ids = random_ids(2, 25, seed=3)
    with torch.no_grad():
        hf_swa = model(ids).logits
        hf.apply_swaa(model, SWAAConfig(window=W))
        # set aside while SWAA decides the windows: transformers' caches keep every key
        assert model.config.layer_types == ["full_attention"] * NUM_LAYERS
        ours = model(ids).logits
        hf.remove_swaa(model)
    torch.testing.assert_close(ours, hf_swa, atol=1e-5, rtol=1e-5)
    assert model.config.sliding_window == W and model.config._attn_implementation == attn


def test_model_with_own_sliding_window_generates_with_default_cache():
    """transformers' default cache for a sliding-window Mistral would drop the keys that sink
    tokens and full layers need; under apply_swaa it keeps them."""
    model = tiny_model("mistral", sliding_window=4)
    cfg = SWAAConfig(window=4, sink=2, full_layers=(1,), full_decode=(2,))
    ids = random_ids(1, 18, seed=13)
    ref_tokens, ref_logits = reference_generate(model, cfg, ids)
    hf.apply_swaa(model, cfg)
    tokens, logits = generate(model, ids, cache=None)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-4)
    assert torch.equal(tokens, ref_tokens)


def test_qwen2_hybrid_sliding_layers_equal_the_matching_plan():
    """Qwen2's own hybrid (sliding layers from max_window_layers on) is the plan with the other
    layers in full_layers; its config comes back exactly after remove_swaa."""
    W = 5
    model = tiny_model("qwen2", use_sliding_window=True, sliding_window=W, max_window_layers=2)
    full = tuple(i for i, t in enumerate(model.config.layer_types) if t == "full_attention")
    assert 0 < len(full) < NUM_LAYERS
    config_before = model.config.to_dict()
    ids = random_ids(2, 19, seed=12)
    with torch.no_grad():
        hf_hybrid = model(ids).logits
        hf.apply_swaa(model, SWAAConfig(window=W, full_layers=full))
        ours = model(ids).logits
        hf.remove_swaa(model)
    torch.testing.assert_close(ours, hf_hybrid, atol=1e-5, rtol=1e-5)
    assert model.config.to_dict() == config_before


@pytest.mark.parametrize("name", list(SWAAConfig.presets()))
def test_every_preset_matches_explicit_mask_reference(name):
    model = tiny_model("llama")
    cfg = small_preset(name)
    ids = random_ids(2, 21, seed=4)
    ref_tokens, ref_logits = reference_generate(model, cfg, ids)
    hf.apply_swaa(model, cfg)
    cache = hf.SWAACache(model)
    tokens, logits = generate(model, ids, cache)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-4)
    assert torch.equal(tokens, ref_tokens)
    # the plan decides which layers got a ring buffer
    assert cache.ring_layers == [p.layer for p in cfg.plan(NUM_LAYERS) if p.ring]


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("cfg", [SWAAConfig(window=4, sink=2, full_decode=True, full_layers=(1,)),
                                 SWAAConfig(window=5, sink=1, full_tail=3)],
                         ids=["fa_decode", "full_tail"])
def test_architectures_match_reference(arch, cfg):
    model = tiny_model(arch)
    ids = random_ids(1, 17, seed=5)
    ref_tokens, ref_logits = reference_generate(model, cfg, ids, new=4)
    hf.apply_swaa(model, cfg)
    tokens, logits = generate(model, ids, hf.SWAACache(model), new=4)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-4)
    assert torch.equal(tokens, ref_tokens)


@pytest.mark.parametrize("cfg", [SWAAConfig(window=4, sink=2, full_tail=3, full_decode=(0, 2)),
                                 SWAAConfig(window=4, full_tail=2, full_layers="1::2")])
def test_full_tail_with_dynamic_cache_and_with_prompt_len(cfg):
    """The same plan through SWAACache, through a DynamicCache, and in one forward pass over
    prompt + answer told where the prompt ends (swaa_prompt_len) gives the same logits."""
    model = tiny_model("qwen2")
    ids = random_ids(1, 19, seed=6)
    ref_tokens, ref_logits = reference_generate(model, cfg, ids, new=5)
    hf.apply_swaa(model, cfg)
    tokens, logits = generate(model, ids, hf.SWAACache(model), new=5)
    dyn_tokens, dyn_logits = generate(model, ids, DynamicCache(), new=5)
    assert torch.equal(tokens, ref_tokens) and torch.equal(dyn_tokens, ref_tokens)
    torch.testing.assert_close(dyn_logits, ref_logits, atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        seq = torch.cat([ids, tokens], 1)
        one_pass = model(seq, swaa_prompt_len=ids.shape[1]).logits[:, ids.shape[1] - 1:-1]
    torch.testing.assert_close(one_pass, ref_logits, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["sink", "sink+fa_decode", "half_full", "fa_decode+quarter_full"])
def test_cache_memory_is_as_predicted(name):
    model = tiny_model("llama")
    cfg = small_preset(name, window=4)
    hf.apply_swaa(model, cfg)
    B, L, new = 3, 22, 5
    cache = hf.SWAACache(model)
    generate(model, random_ids(B, L, seed=7), cache, new=new)
    plan = cfg.plan(NUM_LAYERS)
    rings = sum(p.ring for p in plan)
    per_slot = 2 * B * model.config.num_key_value_heads * 16 * 4  # K and V, head_dim 16, float32
    length = L + new - 1  # the last generated token is never fed back
    expected = per_slot * (rings * (cfg.sink + cfg.window) + (NUM_LAYERS - rings) * length)
    assert cache.nbytes == expected
    assert cache.get_seq_length() == length


@pytest.mark.parametrize("arch,name", [("llama", "naive"), ("llama", "sink+fa_decode"),
                                       ("llama", "sink+half_full"), ("mistral", "sink"),
                                       ("qwen3", "fa_decode+quarter_full"),
                                       pytest.param("qwen2", SWAAConfig(window=4, sink=2, full_tail=3),
                                                    id="qwen2-sink+full_tail")])
def test_left_padded_batch_equals_one_by_one(arch, name):
    model = tiny_model(arch)
    cfg = name if isinstance(name, SWAAConfig) else small_preset(name, window=4)
    hf.apply_swaa(model, cfg)
    lengths = [15, 9, 12, 15]
    rows = [random_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    L = max(lengths)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, L - len(row):] = row
        mask[b, L - len(row):] = 1
    batch_tokens, batch_logits = generate(model, ids, hf.SWAACache(model), attention_mask=mask)
    dyn_tokens, _ = generate(model, ids, DynamicCache(), attention_mask=mask)
    assert torch.equal(dyn_tokens, batch_tokens)
    for b, row in enumerate(rows):
        tokens, logits = generate(model, row[None], hf.SWAACache(model))
        assert torch.equal(batch_tokens[b], tokens[0]), f"row {b}"
        torch.testing.assert_close(batch_logits[b], logits[0], atol=2e-5, rtol=1e-4)
    ref_tokens, _ = reference_generate(model, cfg, ids, attention_mask=mask)
    assert torch.equal(ref_tokens, batch_tokens)


def test_sampling_with_swaa_cache_equals_dynamic_cache():
    model = tiny_model("llama")
    hf.apply_swaa(model, SWAAConfig(window=4, sink=1))
    ids = random_ids(2, 16, seed=8)
    torch.manual_seed(123)
    ring_tokens, _ = generate(model, ids, hf.SWAACache(model), new=8, do_sample=True, top_k=20)
    torch.manual_seed(123)
    dyn_tokens, _ = generate(model, ids, DynamicCache(), new=8, do_sample=True, top_k=20)
    assert torch.equal(ring_tokens, dyn_tokens)


@pytest.mark.parametrize("padded", [False, True])
def test_beam_search_with_swaa_cache_equals_dynamic_cache(padded):
    model = tiny_model("llama")
    hf.apply_swaa(model, SWAAConfig(window=4, sink=1, full_layers=(1,)))
    ids = random_ids(2, 14, seed=9)
    mask = torch.ones_like(ids)
    if padded:
        ids[1, :4], mask[1, :4] = 0, 0
    kw = dict(num_beams=3, num_return_sequences=2, new=6, attention_mask=mask)
    ring_tokens, _ = generate(model, ids, hf.SWAACache(model), **kw)
    dyn_tokens, _ = generate(model, ids, DynamicCache(), **kw)
    assert torch.equal(ring_tokens, dyn_tokens)


def test_assisted_generation_cropping_is_refused():
    model = tiny_model("llama")
    hf.apply_swaa(model, SWAAConfig(window=4))
    cache = hf.SWAACache(model)
    generate(model, random_ids(1, 10, seed=9), cache, new=2)
    with pytest.raises(NotImplementedError, match="cropping"):
        cache.crop(-1)


def test_errors_name_the_reason():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="apply_swaa"):
        hf.SWAACache(model)
    with pytest.raises(ValueError, match="full_layers"):
        hf.apply_swaa(model, SWAAConfig(window=4, full_layers=(7,)))
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="PreTrainedModel"):
        hf.apply_swaa(torch.nn.Linear(2, 2), SWAAConfig())
    with pytest.raises(TypeError, match="SWAAConfig"):
        hf.apply_swaa(model, {"window": 4})
    with pytest.raises(ValueError, match="not applied"):
        hf.remove_swaa(model)
    hf.apply_swaa(model, SWAAConfig(window=4))
    hole = torch.ones(1, 10, dtype=torch.long)
    hole[0, 4] = 0
    with pytest.raises(ValueError, match="zeros between real tokens"):
        model(random_ids(1, 10, seed=1), attention_mask=hole)
    packed = torch.cat([torch.arange(5), torch.arange(5)])[None]
    with pytest.raises(ValueError, match="packed sequences"):
        model(random_ids(1, 10, seed=1), position_ids=packed)
    with torch.no_grad():  # contiguous positions with an offset are fine
        model(random_ids(1, 10, seed=1), position_ids=torch.arange(3, 13)[None])
    # a SWAACache left over from another plan is refused, not silently misused
    stale = hf.SWAACache(model)
    hf.apply_swaa(model, SWAAConfig(window=6))
    with pytest.raises(RuntimeError, match="another SWAA plan"):
        generate(model, random_ids(1, 8, seed=1), stale, new=2)


def test_bert_is_refused():
    from transformers import BertConfig, BertModel
    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="cannot serve"):
        hf.apply_swaa(model, SWAAConfig(window=4))
    assert model.config._attn_implementation != "swaa"


def test_right_padding_in_a_forward_pass_leaves_real_tokens_alone():
    model = tiny_model("llama")
    hf.apply_swaa(model, SWAAConfig(window=4, sink=1))
    a, b = random_ids(1, 14, seed=20), random_ids(1, 9, seed=21)
    ids = torch.zeros(2, 14, dtype=torch.long)
    mask = torch.zeros(2, 14, dtype=torch.long)
    ids[0], mask[0] = a[0], 1
    ids[1, :9], mask[1, :9] = b[0], 1
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        alone = model(b).logits
    torch.testing.assert_close(batch[1, :9], alone[0], atol=1e-5, rtol=1e-5)


def test_training_gradients_match_reference():
    """Fine-tuning under SWAA (the paper's SWA-aware fine-tuning): gradients through the swaa
    kernels equal those through the explicit-mask reference, with left padding."""
    cfg = SWAAConfig(window=4, sink=1, full_layers=(2,))
    ids = random_ids(2, 12, seed=30)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[1, 3] = -100  # predicted from a padding position, whose output means nothing

    def grads(model):
        model.train()
        model.zero_grad()
        model(ids, attention_mask=mask, position_ids=pos, labels=labels, use_cache=False).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = tiny_model("llama")
    model.set_attn_implementation("swaa_test_ref")
    _REF.update(cfg=cfg, prompt_len=None)
    try:
        ref = grads(model)
    finally:
        _REF.update(cfg=None, prompt_len=None)
        model.set_attn_implementation("sdpa")
    hf.apply_swaa(model, cfg)
    ours = grads(model)
    assert ref.keys() == ours.keys() and len(ours) > 10
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------
# low precision on an accelerator: the FlashAttention-style criterion at model level
def _forced_logits(model, ids, mask, forced, cache):
    """Prefill ids (left padded by mask), then feed the tokens of `forced` one by one; logits of
    the last position of every call (B, 1 + forced, V) in float32 on the CPU."""
    device = next(model.parameters()).device
    ids, mask, forced = ids.to(device), mask.to(device), forced.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    outs = []
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        outs.append(out.logits[:, -1])
        for t in range(forced.shape[1]):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
            out = model(forced[:, t:t + 1], attention_mask=mask, position_ids=pos,
                        past_key_values=cache, use_cache=True)
            outs.append(out.logits[:, -1])
    return torch.stack(outs, 1).float().cpu()


def _low_precision_check(name, device, dtype):
    cfg = SWAAConfig.preset(name, window=16, sink=4 if "sink" in name else None)
    ids = random_ids(2, 70, seed=40)
    mask = torch.ones_like(ids)
    ids[1, :9], mask[1, :9] = 0, 0
    forced = random_ids(2, 5, seed=41)
    gold_model = tiny_model("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                            head_dim=64)
    full_gold = _forced_logits(gold_model, ids, mask, forced, DynamicCache())
    hf.apply_swaa(gold_model, cfg)
    gold = _forced_logits(gold_model, ids, mask, forced, hf.SWAACache(gold_model))

    model = tiny_model("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=64).to(device=device, dtype=dtype)
    # what torch itself loses in this dtype (unpatched sdpa model against its float32 self)
    torch_err = (_forced_logits(model, ids, mask, forced, DynamicCache()) - full_gold).abs().max()
    hf.apply_swaa(model, cfg)
    for cache in (hf.SWAACache(model), DynamicCache()):
        err = (_forced_logits(model, ids, mask, forced, cache) - gold).abs().max()
        assert err <= 2 * torch_err + 1e-3, (type(cache).__name__, err, torch_err)


@pytest.mark.parametrize("name", ["sink", "sink+fa_decode", "sink+half_full"])
def test_bfloat16_cpu_within_torch_error(name):
    _low_precision_check(name, "cpu", torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["naive", "sink", "sink+fa_decode", "sink+half_full"])
def test_cuda_bfloat16_within_torch_error(name):
    _low_precision_check(name, "cuda", torch.bfloat16)
