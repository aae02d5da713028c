"""A1111 infotext -> plain values, from images and pasted text (no torch)."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image, PngImagePlugin

from dumpunet.errors import InfotextError
from dumpunet.infotext import Infotext, image_infotext, model_hash_note, parse_infotext, read_infotext

# What A1111 1.10 writes for a txt2img with Hires fix, a LoRA and an embedding (prompt and
# negative prompt over several lines; quoted values hold commas and quotes).
HIRES = """masterpiece, best quality, 1girl, (pink hair:1.2), <lora:add_detail:0.6>,
school uniform, cherry blossoms
BREAK wide shot
Negative prompt: (worst quality, low quality:1.4), EasyNegative,
bad anatomy, extra fingers
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1719471015, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, \
Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+ Anime6B, \
Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "EasyNegative: c74b4e810b03", \
ADetailer prompt: "a \\"smiling\\" face, detailed eyes", Version: v1.10.1"""

# A1111 1.5 era: the schedule in the sampler's name, an 8-digit model hash, no negative prompt.
OLD = """a photo of an astronaut riding a horse on mars
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3938429045, Size: 768x512, Model hash: e1441589a6, \
Model: sd-v1-5, ENSD: 31337"""

# img2img: its Denoising strength is the img2img strength.
IMG2IMG = """a watercolor painting of a fox
Negative prompt: blurry
Steps: 30, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Denoising strength: 0.6, \
Mask blur: 4, Emphasis: No norm, Version: v1.9.4"""


def test_hires_infotext_reads_as_a1111_does():
    info = parse_infotext(HIRES)
    assert info.prompt == ("masterpiece, best quality, 1girl, (pink hair:1.2), <lora:add_detail:0.6>,\n"
                           "school uniform, cherry blossoms\nBREAK wide shot")
    assert info.negative_prompt == "(worst quality, low quality:1.4), EasyNegative,\nbad anatomy, extra fingers"
    assert info.params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert info.params["ADetailer prompt"] == 'a "smiling" face, detailed eyes'
    assert info.params["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert list(info.params)[:3] == ["Steps", "Sampler", "Schedule type"]
    assert info.model_hash == "6ce0161689"


def test_hires_fields_map_to_the_first_pass_and_the_rest_is_listed_once():
    info = parse_infotext(HIRES)
    assert info.request_fields() == {
        "prompt": info.prompt, "negative_prompt": info.negative_prompt, "sampling_steps": 28, "sampler": "DPM++ 2M",
        "schedule": "Karras", "cfg": 7.0, "seed": 1719471015, "width": 512, "height": 768, "clip_skip": 2,
    }
    # the Hires pass's Denoising strength is not an img2img strength
    assert info.unused == ("Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler", "Lora hashes",
                           "TI hashes", "ADetailer prompt", "Version")
    assert info.warning() == ("infotext fields not used: Denoising strength, Hires upscale, Hires steps, "
                              "Hires upscaler, Lora hashes, TI hashes, ADetailer prompt, Version")


def test_old_infotext_keeps_the_schedule_in_the_sampler_name_and_has_no_negative():
    info = parse_infotext(OLD)
    assert (info.prompt, info.negative_prompt) == ("a photo of an astronaut riding a horse on mars", "")
    fields = info.request_fields()
    assert (fields["sampler"], "schedule" in fields) == ("DPM++ 2M Karras", False)
    assert (fields["width"], fields["height"], fields["cfg"], fields["seed"]) == (768, 512, 7.5, 3938429045)
    assert info.unused == ("ENSD",)


def test_img2img_strength_and_emphasis_are_used():
    info = parse_infotext(IMG2IMG)
    fields = info.request_fields()
    assert (fields["strength"], fields["emphasis"]) == (0.6, "no-norm")
    assert info.unused == ("Mask blur", "Version")


def test_options_the_user_gave_win():
    info = parse_infotext(HIRES)
    fields = info.request_fields(given={"prompt", "sampling_steps", "height"})
    assert "prompt" not in fields and "sampling_steps" not in fields and "height" not in fields
    assert (fields["width"], fields["negative_prompt"]) == (512, info.negative_prompt)


def test_a_given_sampler_leaves_the_infotext_schedule_out():
    fields = parse_infotext(HIRES).request_fields(given={"sampler"})
    assert "sampler" not in fields and "schedule" not in fields
    assert parse_infotext(HIRES).request_fields(given={"schedule"})["sampler"] == "DPM++ 2M"


def test_text_without_a_parameter_line_is_all_prompt():
    # fewer than three Name: value pairs on the last line: A1111 reads it as prompt text
    info = parse_infotext("a cat\nstyle: watercolor, mood: calm")
    assert (info.prompt, dict(info.params)) == ("a cat\nstyle: watercolor, mood: calm", {})
    assert info.request_fields() == {"prompt": "a cat\nstyle: watercolor, mood: calm", "negative_prompt": ""}


def test_parameters_only_text():
    info = parse_infotext("Steps: 5, Sampler: Euler, Seed: 9")
    assert (info.prompt, info.request_fields()["seed"]) == ("", 9)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Steps: 20, Seed: 1, Size: 512x", "pasted text: infotext field Size must be WIDTHxHEIGHT, e.g. 512x768, got '512x'"),
        ("Steps: 20, Seed: 1, Size: 512 x 768",
         "pasted text: infotext field Size must be WIDTHxHEIGHT, e.g. 512x768, got '512 x 768'"),
        ("Steps: twenty, Seed: 1, Size: 64x64", "pasted text: infotext field Steps must be a whole number, got 'twenty'"),
        ("Steps: 20, Seed: 1.5, Size: 64x64", "pasted text: infotext field Seed must be a whole number, got '1.5'"),
        ("Steps: 20, CFG scale: high, Size: 64x64", "pasted text: infotext field CFG scale must be a number, got 'high'"),
        ("Steps: 20, Emphasis: Loud, Size: 64x64",
         "pasted text: infotext field Emphasis must be Original, No norm, Ignore or None, got 'Loud'"),
    ],
)
def test_malformed_fields_are_one_line_errors(line, message):
    info = parse_infotext("a cat\n" + line)
    with pytest.raises(InfotextError) as err:
        info.request_fields()
    assert str(err.value) == message and isinstance(err.value, ValueError)


def test_empty_infotext_is_refused():
    with pytest.raises(InfotextError, match="^pasted text: the infotext is empty$"):
        read_infotext("  \n ")


# ----------------------------------------------------------------------------- images


def _png(tmp_path, **chunks):
    meta = PngImagePlugin.PngInfo()
    for key, (kind, text) in chunks.items():
        if kind == "itxt":
            meta.add_itxt(key, text)
        else:
            meta.add_text(key, text, zip=kind == "ztxt")
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (200, 30, 90)).save(path, pnginfo=meta)
    return path


@pytest.mark.parametrize("kind", ["text", "ztxt", "itxt"])
def test_png_parameters_chunk_is_read(tmp_path, kind):
    path = _png(tmp_path, parameters=(kind, HIRES), Software=("text", "other"))
    info = read_infotext(path)
    assert info == parse_infotext(HIRES, source=str(path))
    assert read_infotext(str(path)).params == info.params  # a path given as text


def _user_comment(text: str) -> bytes:
    # what piexif.helper.UserComment.dump(text, encoding="unicode") writes, as A1111 does
    return b"UNICODE\0" + text.encode("utf-16-be")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment_is_read(tmp_path, fmt):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = _user_comment(OLD)
    path = tmp_path / f"a.{fmt.lower()}"
    Image.new("RGB", (8, 8)).save(path, fmt, exif=exif)
    assert read_infotext(path).params == parse_infotext(OLD).params


def test_png_without_parameters_is_refused(tmp_path):
    path = _png(tmp_path, Software=("text", "GIMP"))
    with pytest.raises(InfotextError) as err:
        read_infotext(path)
    assert str(err.value) == f"{path} holds no A1111 parameters (no 'parameters' text chunk and no EXIF UserComment)"


def test_unreadable_image_is_refused(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InfotextError) as err:
        image_infotext(path)
    assert str(err.value).startswith(f"cannot read {path} as an image: ") and "\n" not in str(err.value)


def test_truncated_png_is_refused(tmp_path):
    path = _png(tmp_path, parameters=("text", OLD))
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"tEXt") + 10])
    with pytest.raises(InfotextError, match=f"^cannot read {path} as an image: "):
        read_infotext(path)


def test_a_missing_image_is_not_taken_for_a_prompt(tmp_path):
    with pytest.raises(InfotextError, match="^no image file at girl.png$"):
        read_infotext("girl.png")
    with pytest.raises(InfotextError, match="no image file at"):
        read_infotext(tmp_path / "missing")  # a Path is always a file
    assert read_infotext("a cat on a mat").prompt == "a cat on a mat"  # one line of text is a prompt


# ----------------------------------------------------------------------------- model hash


def test_model_hash_matches_the_checkpoint_file(tmp_path):
    ckpt = tmp_path / "anything.safetensors"
    ckpt.write_bytes(bytes(range(256)) * 5000)  # over 1 MiB + 64 KiB: the old hash reads there
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    model = {"name": "anything", "path": str(ckpt), "file_sha256": sha}
    assert model_hash_note(Infotext("a", params={"Model hash": sha[:10]}), model) is None
    assert model_hash_note(Infotext("a", params={"Model hash": sha[:10].upper()}), model) is None
    legacy = hashlib.sha256(ckpt.read_bytes()[0x100000:0x110000]).hexdigest()[:8]
    assert model_hash_note(Infotext("a", params={"Model hash": legacy}), model) is None
    other = "0123456789" if sha[:10] != "0123456789" else "9876543210"
    note = model_hash_note(Infotext("a", params={"Model hash": other, "Model": "sd15"}), model)
    assert note == (f"warning: the infotext's Model hash {other} (Model: sd15) does not match anything.safetensors "
                    f"(hash {sha[:10]}); recording with the loaded model")


def test_model_hash_of_a_model_that_is_not_a_file_is_not_checked():
    info = Infotext("a", params={"Model hash": "6ce0161689", "Model": "v1-5"})
    assert model_hash_note(info, {"name": "tiny-sd1", "path": None}) == (
        "note: the infotext's Model hash 6ce0161689 (Model: v1-5) is not checked: tiny-sd1 is not a checkpoint file")
    assert model_hash_note(Infotext("a"), {"name": "tiny-sd1"}) is None
