"""A run's final images as PNG files: ``dumpunet render STORE --final``.

One file per selected image of the batch, ``final-img{i}.png``: the decoded image the run
finished with, pixel for pixel (the viewer's "final image" view, and its CLI command). Every
image is read before anything is written, so a run that never finished (or an image out of
range) fails with one readable error and writes nothing. Files are written atomically and listed
in ``manifest.json``.

Examples
--------
>>> files = final_images("girl.zarr", Pick(images="0"), out="finals")  # doctest: +SKIP
>>> [f.path.name for f in files]  # doctest: +SKIP
['final-img0.png']
"""

from __future__ import annotations

import os

from dumpunet.analyzer.output import OutputFolder, WrittenFile
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.png import encode_png, resolve_encoder
from dumpunet.specs import parse_ints
from dumpunet.store import Store, open_store

__all__ = ["final_images"]


def final_images(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    *,
    out: str | os.PathLike[str],
    png_encoder: str | None = None,
) -> list[WrittenFile]:
    """Write the final images ``pick.images`` of run ``pick.run`` (default: the store's) as PNG; return the files.

    Of ``pick`` only ``run`` and ``images`` apply; the others must keep their defaults.
    """
    pick.refuse("the final images", "blocks", "steps", "guidance", "channels", "which")
    st = store if isinstance(store, Store) else open_store(store)
    encoder = resolve_encoder(png_encoder)
    run = st.run(pick.run)
    image_list = parse_ints(pick.images, 0, run.n_images - 1, noun="image", what="image spec")
    pictures = {i: run.image(i) for i in image_list}  # read all first: a missing one writes nothing
    output = OutputFolder(out)
    with output:
        return [output.write(f"final-img{i}.png", encode_png(p, encoder=encoder),
                             {"kind": "final", "store": str(st.path.resolve()), "run": run.name, "image": i,
                              "size": [p.shape[1], p.shape[0]]})
                for i, p in pictures.items()]
