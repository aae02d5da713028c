"""Build CLIP tokenizers offline: SD's real one from a packaged vocabulary, and the tiny models' own.

The real SD tokenizers are CLIP byte-level BPE tokenizers with a 49408-token vocabulary.
:func:`clip_tokenizer` builds it from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, the merge list
every CLIP tokenizer is derived from, read from an installed Python distribution that ships it
(see :data:`VOCAB_DISTRIBUTIONS`; the ``record`` extra installs ``openai-clip``) without importing
that distribution's code. Nothing is downloaded.

The tiny models need the same *kind* of tokenizer (so that token positions, ``</w>`` word ends,
BOS/EOS and padding behave as in a real run) but not its size. :func:`tiny_tokenizer` trains a
byte-level BPE on the embedded word list below, the way CLIP's vocabulary is laid out: the 256
byte symbols, the same 256 with ``</w>``, then one token per merge, then ``<|startoftext|>`` and
``<|endoftext|>`` last. Training runs until every listed word is a single token, so ordinary
prompts split into whole words and any other text falls back to sub-word pieces or single bytes
(never ``<unk>``).

Examples
--------
>>> tok = tiny_tokenizer()
>>> tok.tokenize("a cute girl, pink hair")
['a</w>', 'cute</w>', 'girl</w>', ',</w>', 'pink</w>', 'hair</w>']
>>> clip_tokenizer()("a photo of a cat").input_ids
[49406, 320, 1125, 539, 320, 2368, 49407]
"""

from __future__ import annotations

import atexit
import functools
import gzip
import hashlib
import heapq
import inspect
import json
import shutil
import tempfile
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import CLIPTokenizer

__all__ = ["BOS", "EOS", "VOCAB_DISTRIBUTIONS", "WORDS", "clip_tokenizer", "clip_vocab_file", "tiny_tokenizer"]

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_END = "</w>"

# Function words, everyday English, and the vocabulary of typical SD prompts (quality tags,
# subjects, styles, lighting, camera, clothing, negatives). Lowercase letters only: each entry
# must be exactly one pre-token of CLIP's splitting regex.
_WORD_TEXT = """
a an the this that these those some any all each every no not and or but nor so yet if then
than because while when where why how what which who whom whose as at by for from in into of
off on onto out over under up down with without within through across along around about above
below behind beside between beyond near far before after during since until against toward
towards upon i me my mine you your yours he him his she her hers it its we us our ours they them
their theirs myself yourself himself herself itself ourselves themselves one two three four five
six seven eight nine ten eleven twelve twenty hundred thousand first second third last next
many much more most few less least other another such same own only very too also just even
still again ever never always often sometimes here there now today tonight tomorrow yesterday
is are was were be been being am do does did done doing have has had having will would shall
should can could may might must let get got make made take took go went come came see saw look
looking looks give gave put keep kept hold holding held stand standing sit sitting sat lie lying
walk walking run running jump jumping fly flying swim swimming dance dancing sing singing play
playing read reading write writing eat eating drink drinking sleep sleeping smile smiling laugh
laughing cry crying wear wearing carry carrying ride riding fight fighting kiss hug hugging wave
waving think know want like love hate feel felt say said tell ask use used work working live
living grow growing turn turning open close closed show showing leave left right find found
yes please thank thanks hello goodbye new old young big small large little huge tiny tall short
long wide narrow thick thin high low deep shallow heavy light dark bright hot cold warm cool wet
dry clean dirty soft hard smooth rough sharp round square flat empty full fast slow early late
good bad best worst better worse great nice fine beautiful pretty ugly cute lovely gorgeous
handsome elegant cool strange weird normal simple complex rich poor happy sad angry calm scared
tired sleepy excited bored shy proud serious funny silly crazy lonely quiet loud gentle wild
strong weak brave evil kind cruel dead alive real fake true false free busy ready sure
masterpiece best quality high highres absurdres detailed intricate ultra extremely hyper
realistic photorealistic realism photo photograph photography raw professional award winning
trending artstation pixiv deviantart illustration painting drawing sketch render rendering
concept art artwork digital oil watercolor acrylic ink pencil charcoal pastel anime manga
cartoon comic style styled cinematic dramatic epic fantasy scifi science fiction cyberpunk
steampunk surreal abstract minimalist minimal vintage retro modern classic baroque gothic
renaissance impressionism expressionism cubism pop lowpoly voxel pixel isometric octane unreal
engine blender sharp focus bokeh depth field blur blurry blurred noise noisy grain grainy
jpeg artifacts artifact watermark signature text logo username error cropped crop frame
lowres worst normal bad anatomy hands fingers finger extra missing fewer deformed disfigured
mutated mutation malformed poorly drawn duplicate morbid mutilated out gross proportions
disconnected limbs limb long neck cloned face faces body bodies excellent amazing stunning
perfect flawless incredible exquisite insane resolution definition quality
portrait landscape closeup close shot wide angle full body upper lower half profile view
front back side top bottom overhead aerial birds eye level dutch tilt pov selfie solo focus
camera lens mm telephoto macro fisheye panorama panoramic composition centered symmetry
symmetrical rule thirds golden hour blue magic lighting light lights lit backlight backlit
rim volumetric ambient studio natural soft hard neon glow glowing shadow shadows sunlight
moonlight candlelight sunset sunrise dawn dusk twilight night day evening morning noon midnight
fog foggy mist misty haze hazy rain rainy snow snowy storm stormy cloud clouds cloudy sky
girl girls boy boys woman women man men person people child children kid kids baby teen
teenager adult lady gentleman maid nurse doctor teacher student students soldier knight
warrior princess prince queen king witch wizard mage priest nun ninja samurai pirate robot
android cyborg angel demon devil vampire elf fairy goddess god monster dragon ghost zombie
alien mermaid idol singer dancer chef police detective astronaut cowboy farmer family friend
friends couple group crowd character characters hero villain
cat cats dog dogs kitten puppy bird birds fish horse rabbit bunny fox wolf bear lion tiger
deer owl eagle butterfly bee snake frog duck chicken cow pig sheep mouse squirrel panda
penguin dolphin whale shark turtle dinosaur unicorn animal animals pet pets creature
hair hairs head eyes eye eyebrows eyelashes nose mouth lips teeth tongue ear ears cheek cheeks
chin skin neck shoulder shoulders arm arms hand fingers nail nails chest breast waist hip hips
leg legs knee knees foot feet toes tail wings horns heart blood bone bones muscle muscles
blonde brunette redhead bangs ponytail twintails braid braids bun curly straight wavy messy
bob bald beard mustache freckles makeup lipstick blush blushing tears sweat expression
smiling grin frown open closed looking viewer away sideways upward downward
red orange yellow green blue purple violet pink brown black white gray grey silver gold golden
cyan magenta teal beige cream navy maroon crimson scarlet emerald turquoise lavender rainbow
colorful colourful color colour colors monochrome greyscale grayscale sepia pale vivid vibrant
saturated muted pastel transparent shiny glossy matte metallic
dress shirt skirt pants shorts jeans jacket coat hoodie sweater vest suit tie uniform school
serafuku kimono yukata armor armour cape cloak robe gown bikini swimsuit apron boots shoes
sneakers heels socks thighhighs stockings gloves hat cap helmet crown ribbon bow glasses
sunglasses mask scarf necklace earrings ring jewelry bag backpack umbrella sword shield gun
weapon staff wand book flower flowers rose roses leaf leaves tree trees grass forest jungle
garden park field meadow mountain mountains hill hills valley river lake sea ocean beach
island desert cave waterfall volcano canyon cliff rock rocks stone sand water fire ice earth
wind space star stars planet moon sun galaxy universe nebula city town village street road
alley bridge building buildings house home room bedroom kitchen bathroom classroom office
library castle palace temple church shrine tower ruins cafe restaurant shop market station
train car bus ship boat plane airplane spaceship bicycle window door wall floor ceiling roof
table chair bed sofa couch desk lamp mirror clock picture poster sign screen computer phone
food cake bread fruit apple cherry strawberry tea coffee wine cup bottle plate
indoors outdoors inside outside background foreground scenery nature urban rural interior
exterior architecture world scene place area wallpaper texture pattern detail details
made make made by in the style of artist greg rutkowski alphonse mucha studio ghibli
makoto shinkai pixar disney wlop ross tran artgerm
beautifully highly insanely ultra very super slightly barely partially fully
well sharp clear crisp clarity hdr uhd fhd resolution dslr canon nikon sony fujifilm film
kodak polaroid analog shutter exposure aperture iso lens
time year years month week hour minute moment life death love peace war dream dreams memory
story magic power energy spirit soul mind sound music song voice word words name number
thing things part side end way line point shape form size type kind level order
"""

# Pieces CLIP's regex splits off on their own: contractions, and punctuation runs common in
# A1111 prompts with attention weights, "((masterpiece)), (hair:1.2),".
_PIECES = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "((", "))", "),", ")),", ").", "...")

WORDS: tuple[str, ...] = tuple(sorted(set(_WORD_TEXT.split()) | set(_PIECES)))
"""Every piece that :func:`tiny_tokenizer` encodes as one token (besides bytes and specials)."""


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable character table (openai/CLIP simple_tokenizer.py).
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _train_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is one symbol; ties go to the smallest pair."""
    byte_char = _bytes_to_unicode()
    seqs: list[list[str]] = []
    for w in words:
        chars = [byte_char[b] for b in w.encode("utf-8")]
        chars[-1] += _END
        seqs.append(chars)

    counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def account(i: int, sign: int) -> None:
        s = seqs[i]
        for pair in zip(s, s[1:]):
            counts[pair] += sign
            if sign > 0:
                where[pair].add(i)

    for i in range(len(seqs)):
        account(i, +1)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale heap entry; the live count was pushed again when it changed
        merges.append(pair)
        a, b = pair
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair)):
            s = seqs[i]
            if not any(x == a and y == b for x, y in zip(s, s[1:])):
                continue
            account(i, -1)
            touched.update(zip(s, s[1:]))
            out: list[str] = []
            j = 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
            account(i, +1)
            touched.update(zip(out, out[1:]))
        for p in touched:
            c = counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                counts.pop(p, None)
    return merges


Vocab = tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]
"""A CLIP vocabulary: (token, id) pairs and the merge list, in CLIP's order."""


def _layout(merges: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> Vocab:
    """Lay out CLIP's vocabulary: bytes, bytes + ``</w>``, one token per merge, BOS, EOS (openai/CLIP simple_tokenizer.py)."""
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + _END for c in base]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:  # two merge paths can spell the same token; keep its first id
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS, EOS]
    return tuple((t, i) for i, t in enumerate(tokens)), tuple(merges)


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> Vocab:
    return _layout(_train_merges(WORDS))


# --- the real CLIP vocabulary ---------------------------------------------------------------------

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
_BPE_MERGES = 49152 - 256 - 2
"""CLIP uses the file's first 48894 merges (openai/CLIP simple_tokenizer.py): 49408 tokens in all."""

VOCAB_DISTRIBUTIONS: tuple[tuple[str, str], ...] = (
    ("openai-clip", f"clip/{_BPE_FILE}"),  # the record extra's; no torch/torchvision requirement
    ("open-clip-torch", f"open_clip/{_BPE_FILE}"),  # AUTOMATIC1111's environment has it
    ("clip-anytorch", f"clip/{_BPE_FILE}"),
    ("clip", f"clip/{_BPE_FILE}"),  # OpenAI's repository installed from git, as A1111 does
)
"""Installed distributions whose files include OpenAI's CLIP BPE vocabulary, searched in this order.

Each ships the same file (sha256 checked); it is read as data, never imported, so a
distribution whose code needs torchvision still serves.
"""


def clip_vocab_file() -> Path:
    """Return the path of OpenAI's CLIP BPE file from the first installed :data:`VOCAB_DISTRIBUTIONS` entry.

    Raises :class:`~dumpunet.errors.ModelError` naming the distributions looked for when none is installed.
    """
    from dumpunet.errors import ModelError

    for dist_name, rel in VOCAB_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        path = Path(str(dist.locate_file(rel)))
        if path.is_file():
            return path
    names = ", ".join(d for d, _ in VOCAB_DISTRIBUTIONS)
    raise ModelError(
        f"the CLIP tokenizer vocabulary ({_BPE_FILE}) is not installed: it comes with any of {names}; "
        "pip install openai-clip (no torch requirement; the record extra includes it)"
    )


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> Vocab:
    from dumpunet.errors import ModelError

    path = clip_vocab_file()
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != _BPE_SHA256:
        raise ModelError(f"{path} is not OpenAI's CLIP vocabulary (its sha256 differs from {_BPE_SHA256[:12]}...)")
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _BPE_MERGES + 1]]  # line 0 is a version header
    return _layout([(a, b) for a, b in merges])


def clip_tokenizer(*, pad_token: str = EOS) -> CLIPTokenizer:
    """Return SD's CLIP tokenizer (49408 tokens, 77 positions), built offline from the packaged vocabulary.

    Parameters
    ----------
    pad_token
        ``<|endoftext|>`` as in SD1 and SDXL's first tokenizer; SD2 and SDXL's second
        (OpenCLIP) tokenizer pad with ``"!"``.

    Examples
    --------
    >>> tok = clip_tokenizer(pad_token="!")
    >>> len(tok), tok.pad_token_id, tok.tokenize("masterpiece, best quality")
    (49408, 0, ['masterpiece</w>', ',</w>', 'best</w>', 'quality</w>'])
    """
    return _build("clip", _clip_vocab_and_merges, pad_token)


def tiny_tokenizer(*, pad_token: str = EOS) -> CLIPTokenizer:
    """Return a new CLIP tokenizer whose vocabulary is trained on :data:`WORDS`, without downloads.

    Each call returns a fresh instance (pipelines may change their tokenizer, e.g. by adding
    textual-inversion tokens); the trained vocabulary is computed once per process.

    Parameters
    ----------
    pad_token
        ``<|endoftext|>`` as in SD1/SD2 and SDXL's first tokenizer; SDXL's second tokenizer
        pads with ``"!"``.

    Examples
    --------
    >>> tok = tiny_tokenizer()
    >>> tok.model_max_length, tok.bos_token, tok.eos_token, tok.pad_token
    (77, '<|startoftext|>', '<|endoftext|>', '<|endoftext|>')
    >>> tok.tokenize("masterpiece, best quality")
    ['masterpiece</w>', ',</w>', 'best</w>', 'quality</w>']
    """
    return _build("tiny", _vocab_and_merges, pad_token)


def _build(name: str, vocab_and_merges: Callable[[], Vocab], pad_token: str) -> CLIPTokenizer:
    """Make a CLIPTokenizer: transformers 5 takes the vocabulary in memory, transformers 4 from files."""
    from transformers import CLIPTokenizer

    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token, "model_max_length": 77}
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        vocab, merges = vocab_and_merges()
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **specials)
    vocab_file, merges_file = _vocab_files(name, vocab_and_merges)  # transformers 4 reads files only
    return CLIPTokenizer(vocab_file=vocab_file, merges_file=merges_file, **specials)


@functools.lru_cache(maxsize=2)
def _vocab_files(name: str, vocab_and_merges: Callable[[], Vocab]) -> tuple[str, str]:
    """Write vocab.json and merges.txt once per process and vocabulary into a folder removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix=f"dumpunet-{name}-tokenizer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    vocab, merges = vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False), encoding="utf-8")
    # CLIP's merges.txt starts with a version line that readers skip
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(folder / "vocab.json"), str(folder / "merges.txt")
