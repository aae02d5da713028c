"""The store's JSON attributes as typed values: the only place that spells an attribute key.

Each value parses its JSON with :meth:`from_json`, checking every field's type and naming the
path of a bad one (``runs/main: attribute 'n_images' must be an integer, got 'two'``), and
writes it back with :meth:`to_json`. Readers never index attribute dicts; writers never build
them by hand. Keys that a value does not know are kept in ``extra`` and written back unchanged,
so a store written by a newer minor version keeps its additions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dumpunet.errors import StoreError
from dumpunet.store.schema.fields import NAME_PATTERN, Fields, check_name, drop_none

__all__ = ["GUIDANCE_LABELS", "HEADER_KEY", "NAME_PATTERN", "STORE_KIND", "BlockInfo", "Header",
           "PairInfo", "PromptListInfo", "RootAttrs", "RunAttrs", "TokenRow", "check_name"]

STORE_KIND = "dumpunet-store"
HEADER_KEY = "dumpunet"
GUIDANCE_LABELS: tuple[str, ...] = ("uncond", "cond")
"""Order of the guidance axis when classifier-free guidance is on (diffusers batches uncond first)."""

# --------------------------------------------------------------------------- root


@dataclass(frozen=True)
class Header:
    """The ``dumpunet`` attribute of the root group, which marks a directory as a dumpunet store."""

    format_version: int
    format_minor: int
    writer: str
    created: str
    kind: str = STORE_KIND

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "format_version": self.format_version, "format_minor": self.format_minor,
                "writer": self.writer, "created": self.created}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> Header:
        if not isinstance(doc, Mapping) or doc.get("kind") != STORE_KIND:
            raise StoreError(f"{where} is a zarr store but not a dumpunet store (no '{HEADER_KEY}' header)")
        f = Fields(doc, f"{where}: header")
        version = doc.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise StoreError(f"{where}: the dumpunet header has no integer format_version")
        return cls(format_version=version, format_minor=f.int("format_minor", 0),
                   writer=f.str("writer", ""), created=f.str("created", ""))


@dataclass(frozen=True)
class BlockInfo:
    """One row of the block table (root attribute ``blocks``)."""

    name: str
    module: str  # diffusers module whose output is the block output
    modules: tuple[str, ...]  # every module of the unit, in call order
    input_module: str  # module whose input is the block input
    output_shape: tuple[int, int, int]  # channel, y, x at the recorded size
    input_shape: tuple[int, int, int]
    cross_attention: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "modules": list(self.modules),
            "input_module": self.input_module,
            "output_shape": list(self.output_shape),
            "input_shape": list(self.input_shape),
            "cross_attention": self.cross_attention,
        }

    @classmethod
    def from_json(cls, doc: Any, where: str = "block table") -> BlockInfo:
        f = Fields(doc, where)
        name = check_name(f.str("name", required=True), where)
        f.where = f"{where} {name}"
        return cls(
            name=name,
            module=f.str("module", required=True),
            modules=f.strs("modules"),
            input_module=f.str("input_module", required=True),
            output_shape=f.ints("output_shape", length=3, required=True),  # type: ignore[arg-type]
            input_shape=f.ints("input_shape", length=3, required=True),  # type: ignore[arg-type]
            cross_attention=f.bool("cross_attention"),
        )


@dataclass(frozen=True)
class PairInfo:
    """One pair of runs (``record --pair``, ``sweep``): ``layered`` differs from ``base`` by per-block prompts."""

    base: str
    layered: str
    label: str

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "layered": self.layered, "label": self.label}

    @classmethod
    def from_json(cls, doc: Any, where: str = "pairs") -> PairInfo:
        f = Fields(doc, where)
        return cls(
            base=check_name(f.str("base", required=True), where),
            layered=check_name(f.str("layered", required=True), where),
            label=f.str("label", required=True),
        )


@dataclass(frozen=True)
class PromptListInfo:
    """Root attribute ``prompt_list``: the prompt file a ``record --prompts`` store was recorded from.

    A rerun of the same command compares itself with this (and with each recorded run's prompt
    and seed) before it records the prompts not recorded yet.
    """

    source: str  # the file as the command line named it
    count: int  # prompts in it
    sha256: str  # of its rows with the defaults filled in (dumpunet.prompt_lists.PromptList.sha256)
    seed: int  # the seed of rows without their own (the command line's --seed; drawn once for -1)
    options: dict[str, Any] = field(default_factory=dict)  # the recording options every prompt shares
    index: int | None = None  # --out-dir: the prompt this store holds (its runs are main, or base + layered)

    def to_json(self) -> dict[str, Any]:
        return drop_none({"source": self.source, "count": self.count, "sha256": self.sha256, "seed": self.seed,
                          "options": self.options, "index": self.index})

    @classmethod
    def from_json(cls, doc: Any, where: str = "prompt_list") -> PromptListInfo:
        f = Fields(doc, where)
        return cls(source=f.str("source", required=True), count=f.int("count", required=True, minimum=1),
                   sha256=f.str("sha256", required=True), seed=f.int("seed", required=True, minimum=0),
                   options=f.obj("options"), index=f.int("index", minimum=0))


@dataclass(frozen=True)
class RootAttrs:
    """The root group's attributes: header, model identity, versions, block table, runs, pairs."""

    header: Header
    model: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    blocks: tuple[BlockInfo, ...] = ()
    runs: tuple[str, ...] = ()
    pairs: tuple[PairInfo, ...] = ()
    prompt_list: PromptListInfo | None = None  # record --prompts
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            HEADER_KEY: self.header.to_json(),
            "model": self.model,
            "versions": self.versions,
            "blocks": [b.to_json() for b in self.blocks],
            "runs": list(self.runs),
            "pairs": [p.to_json() for p in self.pairs],
            **({"prompt_list": self.prompt_list.to_json()} if self.prompt_list is not None else {}),
        }

    @classmethod
    def from_json(cls, doc: Any, where: str) -> RootAttrs:
        f = Fields(doc, where)
        f.used.add(HEADER_KEY)
        header = Header.from_json(doc.get(HEADER_KEY), where)
        blocks = tuple(BlockInfo.from_json(b, f"{where}: block table entry {i}") for i, b in enumerate(f.list("blocks")))
        runs = f.strs("runs", names=True)
        pairs = tuple(PairInfo.from_json(p, f"{where}: pairs entry {i}") for i, p in enumerate(f.list("pairs")))
        listed = f.obj("prompt_list")
        prompt_list = PromptListInfo.from_json(listed, f"{where}: prompt_list") if listed else None
        return cls(header=header, model=f.obj("model"), versions=f.obj("versions"), blocks=blocks, runs=runs,
                   pairs=pairs, prompt_list=prompt_list, extra=f.extra())

    def with_run(self, run: str) -> RootAttrs:
        return replace(self, runs=(*self.runs, run))


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class TokenRow:
    """What the text encoder read for one prompt: token ids, their strings, the real length.

    ``length`` counts the real tokens, start and end included.
    """

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    length: int

    def to_json(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "tokens": list(self.tokens), "length": self.length}

    @classmethod
    def from_json(cls, doc: Any, where: str) -> TokenRow:
        f = Fields(doc, where)
        ids = f.list("ids", required=True)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise f._bad("ids", "a list of integers", ids)
        tokens = f.strs("tokens")
        if len(tokens) != len(ids):
            raise StoreError(f"{where}: {len(ids)} token ids but {len(tokens)} token strings")
        length = f.int("length", len(ids), minimum=0)
        if length > len(ids):
            raise f._bad("length", f"at most {len(ids)}", length)
        return cls(tuple(ids), tokens, length)


def _per_guidance(f: Fields, key: str) -> dict[str, Any]:
    value = f.obj(key)
    for label in value:
        if label not in GUIDANCE_LABELS:
            raise StoreError(f"{f.where}: attribute {key!r} has unknown guidance half {label!r}")
    return value


@dataclass(frozen=True)
class RunAttrs:
    """The attributes of one run group (``runs/<run>``): how it was generated and what it holds.

    The generation parameters (``prompt`` ... ``strength``) are written by ``dumpunet record``;
    a recording through the Python API leaves them None. Every other field is the recorder's.
    """

    # what the sampler did
    steps: int = 1  # sampler steps that ran (img2img: the last strength share)
    num_inference_steps: int | None = None
    scheduler: str | None = None
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    # the axes
    n_images: int = 1
    guidance: tuple[str, ...] = ("cond",)
    latent_size: tuple[int, ...] | None = None
    height: int | None = None
    width: int | None = None
    # what was recorded
    record_steps: str = ""
    recorded_blocks: tuple[str, ...] = ()
    inputs: bool = False
    dtype: str | None = None
    attention_layers: tuple[str, ...] = ()
    # what the text encoder read
    tokens: dict[str, tuple[TokenRow, ...]] = field(default_factory=dict)
    block_prompts: dict[str, dict[str, str]] = field(default_factory=dict)
    prompt_tokens: dict[str, TokenRow] = field(default_factory=dict)
    # generation parameters (CLI recordings)
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    seeds: tuple[int, ...] | None = None
    sampler: str | None = None
    cfg: float | None = None
    requested_steps: int | None = None
    init_image: str | None = None
    strength: float | None = None
    prompt_line: int | None = None  # record --prompts: the line of the prompt file the prompt came from
    # completion
    complete: bool = False
    interrupted: str | None = None
    # how the recording went (format 1.1)
    writer_wait_seconds: float | None = None  # the U-Net's time blocked on a full writer queue
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if f.name == "tokens":
                v = {g: [r.to_json() for r in rows] for g, rows in v.items()}
            elif f.name == "prompt_tokens":
                v = {text: r.to_json() for text, r in v.items()}
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        # keep the documents of older recordings: empty optional fields are left out
        for key in ("tokens", "block_prompts", "prompt_tokens"):
            if not out[key]:
                del out[key]
        return drop_none(out)

    @classmethod
    def from_json(cls, doc: Any, where: str) -> RunAttrs:
        f = Fields(doc, where)
        guidance = f.strs("guidance") or ("cond",)
        if any(g not in GUIDANCE_LABELS for g in guidance) or len(set(guidance)) != len(guidance):
            raise f._bad("guidance", f"a list of distinct labels from {list(GUIDANCE_LABELS)}", list(guidance))
        tokens = {
            g: tuple(TokenRow.from_json(r, f"{where}: tokens {g} row {i}") for i, r in enumerate(_list(rows, f"{where}: tokens {g}")))
            for g, rows in _per_guidance(f, "tokens").items()
        }
        block_prompts = {}
        for g, table in _per_guidance(f, "block_prompts").items():
            if not isinstance(table, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
                raise StoreError(f"{where}: attribute 'block_prompts' {g} must map block names to texts")
            block_prompts[g] = dict(table)
        prompt_tokens = {
            text: TokenRow.from_json(row, f"{where}: prompt_tokens {text!r}") for text, row in f.obj("prompt_tokens").items()
        }
        seeds = f.list("seeds") if "seeds" in doc and doc["seeds"] is not None else None
        if seeds is not None and not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise f._bad("seeds", "a list of integers", seeds)
        return cls(
            steps=f.int("steps", 1, minimum=0),
            num_inference_steps=f.int("num_inference_steps"),
            scheduler=f.str("scheduler"),
            scheduler_config=f.obj("scheduler_config"),
            n_images=f.int("n_images", 1, minimum=1),
            guidance=guidance,
            latent_size=f.ints("latent_size", length=2),
            height=f.int("height", minimum=1),
            width=f.int("width", minimum=1),
            record_steps=f.str("record_steps", ""),
            recorded_blocks=f.strs("recorded_blocks", names=True),
            inputs=f.bool("inputs"),
            dtype=f.str("dtype"),
            attention_layers=f.strs("attention_layers", names=True),
            tokens=tokens,
            block_prompts=block_prompts,
            prompt_tokens=prompt_tokens,
            prompt=f.str("prompt"),
            negative_prompt=f.str("negative_prompt"),
            seed=f.int("seed"),
            seeds=tuple(seeds) if seeds is not None else None,
            sampler=f.str("sampler"),
            cfg=f.float("cfg"),
            requested_steps=f.int("requested_steps"),
            init_image=f.str("init_image"),
            strength=f.float("strength"),
            prompt_line=f.int("prompt_line", minimum=1),
            complete=f.bool("complete"),
            interrupted=f.str("interrupted"),
            writer_wait_seconds=f.float("writer_wait_seconds"),
            extra=f.extra(),
        )

    def token_row(self, guidance: str, image: int = 0, block: str | None = None) -> TokenRow | None:
        """What the text encoder read for one half of the batch (with per-block prompts: ``block``'s).

        None where nothing was encoded (SDXL's zeroed empty negative prompt) or the pipeline got
        embeddings directly.
        """
        prompts = self.block_prompts.get(guidance)
        if prompts and block is not None:
            text = prompts.get(block.split(".", 1)[0])
            return self.prompt_tokens.get(text) if text is not None else None
        rows = self.tokens.get(guidance)
        if not rows:
            return None
        return rows[image] if len(rows) == self.n_images else rows[0]


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise StoreError(f"{where}: must be a list, got {type(value).__name__}")
    return value
