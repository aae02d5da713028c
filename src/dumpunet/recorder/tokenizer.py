"""Build a CLIP tokenizer offline, for the embedded tiny models.

The real SD tokenizers are CLIP byte-level BPE tokenizers with a 49408-token vocabulary that
must be downloaded. The tiny models need the same *kind* of tokenizer (so that token
positions, ``</w>`` word ends, BOS/EOS and padding behave as in a real run) but no download.

:func:`tiny_tokenizer` trains a byte-level BPE on the embedded word list below, the way
CLIP's vocabulary is laid out: the 256 byte symbols, the same 256 with ``</w>``, then one
token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last. Training runs until
every listed word is a single token, so ordinary prompts split into whole words and any other
text falls back to sub-word pieces or single bytes (never ``<unk>``).

Examples
--------
>>> tok = tiny_tokenizer()
>>> tok.tokenize("a cute girl, pink hair")
['a</w>', 'cute</w>', 'girl</w>', ',</w>', 'pink</w>', 'hair</w>']
"""

from __future__ import annotations

import atexit
import functools
import heapq
import inspect
import json
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

__all__ = ["BOS", "EOS", "WORDS", "tiny_tokenizer"]

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


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + _END for c in base]
    merges = _train_merges(WORDS)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:  # two merge paths can spell the same token; keep its first id
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS, EOS]
    return tuple((t, i) for i, t in enumerate(tokens)), tuple(merges)


def tiny_tokenizer(*, pad_token: str = EOS) -> CLIPTokenizer:
    """Return a new CLIP tokenizer whose vocabulary is trained on :data:`WORDS`, without downloads.

    Each call returns a fresh instance (pipelines may change their tokenizer, e.g. by adding
    textual-inversion tokens); the trained vocabulary is computed once per process. With
    transformers 5 it is handed over in memory; transformers 4's (slow, pure-Python)
    CLIPTokenizer reads files, written once to a temporary folder that is removed at exit.

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
    from transformers import CLIPTokenizer

    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token, "model_max_length": 77}
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:  # transformers >= 5
        vocab, merges = _vocab_and_merges()
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **specials)
    vocab_file, merges_file = _vocab_files()  # transformers 4 reads its vocabulary from files only
    return CLIPTokenizer(vocab_file=vocab_file, merges_file=merges_file, **specials)


@functools.lru_cache(maxsize=1)
def _vocab_files() -> tuple[str, str]:
    """Write vocab.json and merges.txt once per process into a folder removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="dumpunet-tokenizer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    vocab, merges = _vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(dict(vocab), ensure_ascii=False), encoding="utf-8")
    # CLIP's merges.txt starts with a version line that readers skip
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(folder / "vocab.json"), str(folder / "merges.txt")
