"""A1111 conditioning on the tiny models: chunking, emphasis, clip skip, and the plain-prompt invariant.

Expected values are computed independently here, from the text encoder called directly.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dumpunet.recorder.a1111_encode import A1111Options, encode_texts, pipeline_embeds  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder


@pytest.fixture(scope="module")
def sd1():
    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    pipe = build_tiny_pipeline("tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ids_of(pipe, text):
    return pipe.tokenizer(text, add_special_tokens=False)["input_ids"]


def chunk_ids(pipe, content):
    """An independent 77-token chunk: BOS, the content, EOS up to 77 (SD1 pads with EOS)."""
    tok = pipe.tokenizer
    return [tok.bos_token_id, *content, *[tok.eos_token_id] * (76 - len(content))]


def encode_direct(pipe, ids):
    with torch.no_grad():
        return pipe.text_encoder(torch.tensor([ids]))[0]


# --------------------------------------------------------------------------------------- chunking


def test_a_120_token_prompt_gives_two_chunks_of_77(sd1):
    girl = ids_of(sd1, "girl")[0]
    cond = encode_texts(sd1, [" ".join(["girl"] * 120)])
    assert cond.embeds[0].shape == (1, 154, 32)
    assert [c.ids for c in cond.chunks[0]] == [tuple(chunk_ids(sd1, [girl] * 75)), tuple(chunk_ids(sd1, [girl] * 45))]
    expected = torch.cat([encode_direct(sd1, chunk_ids(sd1, [girl] * 75)), encode_direct(sd1, chunk_ids(sd1, [girl] * 45))], 1)
    assert torch.equal(cond.embeds[0], expected)


def test_a_chunk_ends_at_its_last_comma_within_20_tokens(sd1):
    girl, comma, cat = ids_of(sd1, "girl")[0], ids_of(sd1, ",")[0], ids_of(sd1, "cat")[0]
    cond = encode_texts(sd1, [" ".join(["girl"] * 60) + ", " + " ".join(["cat"] * 30)])
    assert [c.ids for c in cond.chunks[0]] == [
        tuple(chunk_ids(sd1, [girl] * 60 + [comma])),
        tuple(chunk_ids(sd1, [cat] * 30)),
    ]
    # a comma 21 tokens before the end is too far back: the chunk is cut at 75 tokens
    far = encode_texts(sd1, [" ".join(["girl"] * 54) + ", " + " ".join(["cat"] * 30)])
    assert far.chunks[0][0].ids == tuple(chunk_ids(sd1, [girl] * 54 + [comma] + [cat] * 20))


def test_exactly_75_tokens_is_one_chunk_and_break_starts_a_new_one(sd1):
    assert encode_texts(sd1, [" ".join(["girl"] * 75)]).n_chunks == 1
    assert encode_texts(sd1, [" ".join(["girl"] * 76)]).n_chunks == 2
    girl, cat = ids_of(sd1, "girl")[0], ids_of(sd1, "cat")[0]
    cond = encode_texts(sd1, ["girl BREAK cat"])
    assert [c.ids for c in cond.chunks[0]] == [tuple(chunk_ids(sd1, [girl])), tuple(chunk_ids(sd1, [cat]))]
    assert encode_texts(sd1, ["girl BREAK"]).n_chunks == 1
    assert encode_texts(sd1, [""]).n_chunks == 1


# --------------------------------------------------------------------------------------- emphasis


def test_original_emphasis_multiplies_and_restores_the_mean(sd1):
    cond = encode_texts(sd1, ["a (cute:1.5) [girl]"])
    a, cute, girl = (ids_of(sd1, w)[0] for w in ("a", "cute", "girl"))
    z = encode_direct(sd1, chunk_ids(sd1, [a, cute, girl]))
    w = torch.ones(77)
    w[2], w[3] = 1.5, 1 / 1.1
    weighted = z * w.reshape(1, -1, 1)
    expected = weighted * (z.mean() / weighted.mean())
    torch.testing.assert_close(cond.embeds[0], expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(cond.embeds[0], z)


@pytest.mark.parametrize("model", ["sd1", "sdxl"])
def test_the_emphasis_rescale_is_well_conditioned_on_the_tiny_models(model, request):
    # The rescale divides by the weighted mean: a mean that is rounding noise (a final layer
    # norm with gain 1 and bias 0) gave machine-dependent factors and NaN images.
    pipe = request.getfixturevalue(model)
    plain = encode_texts(pipe, ["a cute girl"]).embeds[0]
    loud = encode_texts(pipe, ["a (cute:1.5) girl"]).embeds[0]
    assert abs(plain.float().mean().item()) > 0.01  # rounding noise is ~1e-8
    assert 0.9 < loud.float().mean().item() / plain.float().mean().item() < 1.1
    assert torch.isfinite(loud).all() and loud.abs().max() < 10 * plain.abs().max()


def test_other_emphasis_modes(sd1):
    text = "a (cute:1.5) girl"
    a, cute, girl = (ids_of(sd1, w)[0] for w in ("a", "cute", "girl"))
    z = encode_direct(sd1, chunk_ids(sd1, [a, cute, girl]))
    assert torch.equal(encode_texts(sd1, [text], A1111Options(emphasis="ignore")).embeds[0], z)
    w = torch.ones(77)
    w[2] = 1.5
    no_norm = encode_texts(sd1, [text], A1111Options(emphasis="no-norm")).embeds[0]
    torch.testing.assert_close(no_norm, z * w.reshape(1, -1, 1), rtol=0, atol=0)
    literal = encode_texts(sd1, [text], A1111Options(emphasis="none"))
    assert literal.chunks[0][0].ids == tuple(chunk_ids(sd1, ids_of(sd1, text)))


def test_the_emphasis_mean_spans_the_texts_encoded_together(sd1):
    # A1111 encodes the texts of a schedule in one batch: one rescale factor for all of them
    both = encode_texts(sd1, ["(a:2) girl", "a cat"], counts=[3, 1])
    z1 = encode_direct(sd1, chunk_ids(sd1, ids_of(sd1, "a girl")))
    z2 = encode_direct(sd1, chunk_ids(sd1, ids_of(sd1, "a cat")))
    w = torch.ones(77)
    w[1] = 2.0
    before = (3 * z1.mean() + z2.mean()) / 4
    after = (3 * (z1 * w.reshape(1, -1, 1)).mean() + z2.mean()) / 4
    torch.testing.assert_close(both.embeds[0], z1 * w.reshape(1, -1, 1) * (before / after), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(both.embeds[1], z2 * (before / after), rtol=1e-6, atol=1e-6)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown emphasis 'loud'"):
        A1111Options(emphasis="loud")
    with pytest.raises(ValueError, match="clip skip must be an integer of at least 1"):
        A1111Options(clip_skip=0)


# ------------------------------------------------------------------------------------- clip skip


def test_clip_skip_n_reads_the_nth_layer_from_the_end_through_the_final_norm(sd1):
    ids = torch.tensor([chunk_ids(sd1, ids_of(sd1, "a cute girl"))])
    with torch.no_grad():
        out = sd1.text_encoder(ids, output_hidden_states=True)
        norm = getattr(sd1.text_encoder, "text_model", sd1.text_encoder).final_layer_norm
        expected = {n: norm(out.hidden_states[-n]) for n in (2, 3)}
        plain = sd1.encode_prompt("a cute girl", "cpu", 1, False)[0]
    assert torch.equal(encode_texts(sd1, ["a cute girl"], A1111Options(clip_skip=1)).embeds[0], plain)
    assert torch.equal(encode_texts(sd1, ["a cute girl"], A1111Options(clip_skip=2)).embeds[0], expected[2])
    assert torch.equal(encode_texts(sd1, ["a cute girl"], A1111Options(clip_skip=3)).embeds[0], expected[3])
    assert not torch.equal(expected[2], plain)


def test_clip_skip_is_ignored_for_sdxl_with_a_note(sdxl):
    one = encode_texts(sdxl, ["a cute girl"])
    two = encode_texts(sdxl, ["a cute girl"], A1111Options(clip_skip=2))
    assert torch.equal(one.embeds[0], two.embeds[0])
    assert two.notes == ["clip skip 2 is ignored for SDXL (as in A1111): the penultimate layers are used"]


# ---------------------------------------------------------------------------- plain-prompt invariant


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_a_plain_prompt_gives_encode_prompts_embeddings_and_the_same_image(name, request):
    pipe = request.getfixturevalue(name)
    prompt, negative = "masterpiece, a cute girl, pink hair", "blurry"
    with torch.no_grad():
        res = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                 negative_prompt=negative)
    kwargs, _, _ = pipeline_embeds(pipe, prompt, negative)
    assert torch.equal(kwargs["prompt_embeds"], res[0])
    assert torch.equal(kwargs["negative_prompt_embeds"], res[1])
    if name == "sdxl":
        assert torch.equal(kwargs["pooled_prompt_embeds"], res[2])
        assert torch.equal(kwargs["negative_pooled_prompt_embeds"], res[3])

    def run(**kw):
        return pipe(num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(3),
                    output_type="np", **kw).images

    np.testing.assert_array_equal(run(**kwargs), run(prompt=prompt, negative_prompt=negative))


def test_sdxl_without_negative_prompt_matches_the_plain_pipeline(sdxl):
    kwargs, _, _ = pipeline_embeds(sdxl, "a cute girl")
    assert kwargs["negative_prompt_embeds"].abs().max() == 0  # A1111 and diffusers: zeros
    assert kwargs["negative_pooled_prompt_embeds"].abs().max() == 0

    def run(**kw):
        return sdxl(num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(3),
                    output_type="np", **kw).images

    np.testing.assert_array_equal(run(**kwargs), run(prompt="a cute girl"))


# ------------------------------------------------------------------------------- long prompts, SDXL


def test_positive_and_negative_get_the_same_chunk_count(sd1):
    kwargs, pos, neg = pipeline_embeds(sd1, "a girl BREAK a cat BREAK a dog", "blurry")
    assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape == (1, 231, 32)
    empty = encode_direct(sd1, chunk_ids(sd1, []))
    assert torch.equal(kwargs["negative_prompt_embeds"][:, 77:154], empty)
    assert torch.equal(kwargs["negative_prompt_embeds"][:, 154:], empty)
    image = sd1(num_inference_steps=2, height=64, width=64, output_type="np", **kwargs).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_sdxl_concatenates_both_encoders_and_pools_the_first_chunk(sdxl):
    cond = encode_texts(sdxl, ["a (cute:1.3) girl BREAK pink hair"])
    assert cond.embeds[0].shape == (1, 154, 96)
    tok2 = sdxl.tokenizer_2
    first = [tok2.bos_token_id, *ids_of(sdxl, "a cute girl"), tok2.eos_token_id]
    first += [tok2.pad_token_id] * (77 - len(first))
    with torch.no_grad():
        out = sdxl.text_encoder_2(torch.tensor([first]), output_hidden_states=True)
        z_l = sdxl.text_encoder(torch.tensor([chunk_ids(sdxl, ids_of(sdxl, "a cute girl"))]), output_hidden_states=True)
    torch.testing.assert_close(cond.pooled[0], out[0], rtol=0, atol=0)  # before emphasis
    w = torch.ones(77)
    w[2] = 1.3
    for z, part in ((z_l.hidden_states[-2], cond.embeds[0][:, :77, :32]), (out.hidden_states[-2], cond.embeds[0][:, :77, 32:])):
        weighted = z * w.reshape(1, -1, 1)
        torch.testing.assert_close(part, weighted * (z.mean() / weighted.mean()), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ prompt editing


def unet_inputs(pipe, steps, **kwargs):
    """Run the pipeline and return every U-Net call's text conditioning (and SDXL's pooled part)."""
    from dumpunet.recorder.samplers import make_scheduler

    seen = []

    def spy(module, args, kw):
        added = kw.get("added_cond_kwargs") or {}
        seen.append((kw["encoder_hidden_states"].clone(), added.get("text_embeds")))

    pipe.scheduler = make_scheduler("Euler", pipe.scheduler.config)
    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        pipe(num_inference_steps=steps, height=64, width=64, generator=torch.Generator().manual_seed(3),
             output_type="np", **kwargs)
    finally:
        handle.remove()
    return seen


def test_prompt_editing_changes_the_conditioning_at_a1111s_step(sd1):
    from dumpunet.recorder.a1111_schedule import ScheduledConditioning

    cond = ScheduledConditioning(sd1, "a [cute:ugly:1] girl", "blurry", steps=4)
    seen = unet_inputs(sd1, 4, **cond.pipeline_kwargs())
    with torch.no_grad():
        cute, neg = sd1.encode_prompt("a cute girl", "cpu", 1, True, negative_prompt="blurry")[:2]
        ugly = sd1.encode_prompt("a ugly girl", "cpu", 1, False)[0]
    expected = [cute, cute, ugly, ugly]  # 'when' 1 covers steps 0 and 1
    assert len(seen) == 4
    for (got, _), pos in zip(seen, expected):
        assert torch.equal(got, torch.cat([neg, pos]))
    assert cond.texts_at(2) == ("a ugly girl", "blurry")


def test_alternation_on_sdxl_changes_the_pooled_embedding_too(sdxl):
    from dumpunet.recorder.a1111_schedule import ScheduledConditioning

    cond = ScheduledConditioning(sdxl, "a [cat|dog]", steps=3)
    seen = unet_inputs(sdxl, 3, **cond.pipeline_kwargs())
    with torch.no_grad():
        texts = {w: sdxl.encode_prompt(f"a {w}", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
                 for w in ("cat", "dog")}
    for (got, pooled), word in zip(seen, ["cat", "cat", "dog"]):
        emb, _, pool, _ = texts[word]
        assert torch.equal(got, torch.cat([torch.zeros_like(emb), emb]))
        assert torch.equal(pooled, torch.cat([torch.zeros_like(pool), pool]))


def test_a_prompt_without_editing_installs_no_callback(sd1):
    from dumpunet.recorder.a1111_schedule import ScheduledConditioning

    cond = ScheduledConditioning(sd1, "a (cute:1.2) girl", "blurry", steps=3)
    kwargs = cond.pipeline_kwargs()
    plain, _, _ = pipeline_embeds(sd1, "a (cute:1.2) girl", "blurry")
    assert sorted(kwargs) == ["negative_prompt_embeds", "prompt_embeds"] and not cond.edited
    assert all(torch.equal(kwargs[k], plain[k]) for k in kwargs)


# ------------------------------------------------------------------------------- per-block prompts


def test_per_block_prompts_with_a1111_syntax(sd1):
    from dumpunet.prompts import parse_layer_prompt
    from dumpunet.recorder.a1111_encode import prompt_pair_encoder
    from dumpunet.recorder.blocks import unet_blocks
    from dumpunet.recorder.conditioning import BlockConditioning

    names = [u.name for u in unet_blocks(sd1.unet)]
    long = " ".join(["cat"] * 80)
    table = parse_layer_prompt(f"a (~: IN00-OUT11: (cute:1.3); M00: [excellent]; OUT05: {long} :~) girl").resolve(names)
    cond = BlockConditioning(sd1, table, None, encode=prompt_pair_encoder(sd1))

    def expected(text):
        kwargs, _, _ = pipeline_embeds(sd1, text, "")
        return torch.cat([kwargs["negative_prompt_embeds"], kwargs["prompt_embeds"]])

    assert torch.equal(cond.contexts["IN01"], expected("a (cute:1.3) girl"))
    assert torch.equal(cond.contexts["M00"], expected("a [excellent] girl"))
    assert cond.contexts["OUT05"].shape == (2, 154, 32)
    with cond:
        image = sd1(prompt=cond.pipeline_prompt, num_inference_steps=2, height=64, width=64, output_type="np").images
    assert np.isfinite(image).all()
