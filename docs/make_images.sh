#!/usr/bin/env bash
# Regenerate docs/images: one example of each output kind, made with the embedded tiny-sd1 model
# (its pictures are noise: what the examples show is the layout, the labels and the legends).
#
#   docs/make_images.sh [OUT]     # OUT defaults to docs/images; run from anywhere
#
# Needs the record extra (torch + diffusers) and the dumpunet command on PATH; the viewer screenshot
# also needs Playwright and chromium (without them viewer.png is left as it is, with a warning).
# Every picture is copied to OUT under the name given to `keep`: tests/test_docs.py reads those names
# from this file, so a picture the docs show is one this script makes.
set -euo pipefail
# torch's CPU kernels add in another order on one thread than on several (on tiny-sd1 a 1x1
# convolution's outputs move by ~1e-7, and the diff summary's largest value 0.0864049948 becomes
# 0.0864050102, whose colour bar label "0.08641" is 5 px wider than "0.0864"), so the thread count
# is pinned: the pictures are then the same byte for byte wherever the CPU kind and the package
# versions are. 2 made the committed ones (2 and 4 threads record the same bytes here; 1 does not).
export OMP_NUM_THREADS=2

here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/images}" && cd "${1:-$here/images}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# keep GLOB NAME: the one file GLOB matches, copied to OUT/NAME (more or fewer matches are an error)
keep() {
    local matches=($1)
    if [ "${#matches[@]}" -ne 1 ] || [ ! -f "${matches[0]}" ]; then
        echo "make_images: '$1' matched ${#matches[@]} files: ${matches[*]}" >&2
        exit 1
    fi
    cp "${matches[0]}" "$out/$2"
}

q=(--quiet)
size=(--width 128 --height 128)

# one recording: 4 steps of 128x128, every block and cross-attention layer
dumpunet record --prompt "a cute girl, pink hair" --seed 1719471015 --sampling-steps 4 "${size[@]}" \
    "${q[@]}" --out girl.zarr

# render: a labelled grid, the same grid --plain, a channel average, an animation over the steps, a mosaic
dumpunet render girl.zarr --blocks OUT11 --steps 4 "${q[@]}" --out render
keep "render/OUT11-step004-img0-cond-*.png" render-OUT11.png
dumpunet render girl.zarr --blocks OUT11 --steps 4 --plain "${q[@]}" --out plain
keep "plain/OUT11-step004-img0-cond-*.png" render-OUT11-plain.png
dumpunet render girl.zarr --blocks M00 --steps 4 --average 2-norm "${q[@]}" --out average
keep "average/M00-step004-img0-cond-*.png" render-M00-average.png
dumpunet render girl.zarr --blocks OUT07 --auto-scope run --animate png "${q[@]}" --out animate
keep "animate/OUT07-*.png" render-OUT07-animated.png
dumpunet render girl.zarr --blocks "IN01,IN04,IN07,M00,OUT03,OUT07,OUT11" --average mean --mosaic "${q[@]}" \
    --out mosaic
keep "mosaic/*.png" render-mosaic.png

# attention: heads x tokens of one layer, and prompt-to-prompt's aggregate per map size
dumpunet attention girl.zarr --layers OUT07.attn2 --steps 4 --tokens "cute,girl,pink,hair" "${q[@]}" --out attention
keep "attention/OUT07.attn2-step004-*.png" attention-OUT07.png
dumpunet attention girl.zarr --steps 4 --aggregate resolution "${q[@]}" --out aggregate
keep "aggregate/res16x16-step004-*.png" attention-aggregate-16x16.png

# heatmap: the word over the final image, and the map alone (--alpha 1)
dumpunet heatmap girl.zarr --word hair "${q[@]}" --out heatmap
keep "heatmap/heatmap-hair-*.png" heatmap-hair.png
dumpunet heatmap girl.zarr --word hair --alpha 1 "${q[@]}" --out heatmap-map
keep "heatmap-map/heatmap-hair-*.png" heatmap-hair-map.png

# per-block prompts as a pair: a difference grid, the block x step summary, the final images
dumpunet record --prompt "a (~: IN00-OUT11: cute; M00: excellent :~) girl" --pair --seed 3292581281 \
    --sampling-steps 4 "${size[@]}" --attention none "${q[@]}" --out pair.zarr
dumpunet diff pair.zarr "${q[@]}" --out diff
keep "diff/diff-OUT11-step004-img0-cond-*.png" diff-OUT11.png
keep diff/summary.png diff-summary.png
keep diff/final-layered-img0.png final-layered-img0.png
keep diff/final-base-img0.png final-base-img0.png
keep diff/final-diff-norm-img0.png final-diff-norm-img0.png

# a sweep: "bad anatomy" inserted into one block at a time, as a contact sheet
dumpunet sweep --prompt "a cute school girl, pink hair, wide shot" --insert "bad anatomy" \
    --into-blocks "IN01,IN04,IN07,M00,OUT03,OUT07" --sampling-steps 4 "${size[@]}" --seed 1 \
    --record-blocks none --attention none "${q[@]}" --out sweep.zarr
dumpunet render sweep.zarr --sweep "${q[@]}" --out sheet
keep sheet/sweep-img0.png sweep-img0.png

# the viewer page on the first recording (Playwright + chromium; exit status 3: one of them is missing)
shot=0
python "$here/viewer_screenshot.py" girl.zarr viewer.png || shot=$?
if [ "$shot" -eq 3 ]; then
    echo "make_images: no viewer screenshot (needs playwright and chromium); viewer.png left as it is" >&2
elif [ "$shot" -ne 0 ]; then
    exit "$shot"
else
    keep viewer.png viewer.png
fi
ls -l "$out"
