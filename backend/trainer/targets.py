"""Training targets made from label crops, exactly as PyTorch Connectomics v1.0.0 makes them.

`seg_to_targets(label, options, erosion, dilation)` returns one array per MODEL.TARGET_OPT
entry for a (z, y, x) label, or a (y, x) label with DATASET.DO_2D. Before each target the
label is copied, eroded (`seg_widen_border`, MODEL.LABEL_EROSION) and dilated (grey
dilation in-plane, MODEL.LABEL_DILATION); a rate may be one number or one per target.
The option grammar and channel counts live in `backend.config.targets`; this module makes
the arrays. numpy and scipy only (no torch): previews may use it.

Outputs: float32 (C, *S) for every family but the class-index targets '1-1' and '9-N',
which are int64 S (no channel axis), as PyTC's WeightedCE takes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage, sparse

Rates = int | Sequence[int] | None

# Instance EDT: holes of at most this many pixels / voxels are filled per instance
# (skimage's remove_small_holes, which PyTC calls with 16).
HOLE_SIZE = 16
# Instance EDT padding: the volume border counts as background this far out.
EDT_PAD = 2
EPS = 1e-6
# Semantic EDT: a mask that is all foreground (or all background) gets this distance.
UNIFORM_DISTANCE = 5.0


class TargetError(ValueError):
    """A TARGET_OPT this module cannot make from the given label."""


# --- label operations ----------------------------------------------------------------------


def reduce_label(label: np.ndarray, do_type: bool = False) -> np.ndarray:
    """Ids renumbered to 1..N in increasing order (0 stays 0); `do_type` also picks the
    smallest unsigned dtype that holds N (PyTC's `reduce_label`, DATASET.REDUCE_LABEL)."""
    ids = np.unique(label)
    ids = ids[ids > 0]
    if ids.size == 0:
        return label
    dtype: np.dtype = label.dtype
    if do_type:
        dtype = np.dtype(
            next(
                t
                for t in (np.uint8, np.uint16, np.uint32, np.uint64)
                if int(ids.max()) + 1 <= np.iinfo(t).max + 1
            )
        )
    mapping = np.zeros(int(ids.max()) + 1, dtype=dtype)
    mapping[ids] = np.arange(1, ids.size + 1)
    result: np.ndarray = mapping[label]
    return result


def _in_plane(label: np.ndarray, size: int) -> tuple[int, ...]:
    return (1, size, size) if label.ndim == 3 else (size, size)


def _distinct_ids_in_window(label: np.ndarray, half: int) -> np.ndarray:
    """True where the in-plane (2 half + 1)^2 window (reflect padding) holds two different
    non-zero ids: max over the window differs from the min over its non-zero ids."""
    seg = label.astype(np.int64)
    window = _in_plane(seg, 2 * half + 1)
    high = ndimage.maximum_filter(seg, size=window, mode="mirror")
    lifted = np.where(seg == 0, int(seg.max()) + 1, seg)
    low = ndimage.minimum_filter(lifted, size=window, mode="mirror")
    result: np.ndarray = (high > 0) & (low <= seg.max()) & (high != low)
    return result


def seg_widen_border(label: np.ndarray, radius: int = 1) -> np.ndarray:
    """Erosion by MODEL.LABEL_EROSION: per z-slice, a pixel whose (2r+1)^2 window holds two
    different non-zero ids becomes background, so touching instances are split."""
    keep = ~_touching(label, radius)
    result: np.ndarray = label * keep.astype(label.dtype)
    return result


def _touching(label: np.ndarray, radius: int) -> np.ndarray:
    # PyTC compares per slice against that slice's own max; the outcome is the same.
    return _distinct_ids_in_window(label, radius)


def _rate(rates: Rates, index: int) -> int | None:
    if rates is None:
        return None
    if isinstance(rates, int):
        return rates
    return int(rates[index])


def prepare_label(label: np.ndarray, index: int, erosion: Rates, dilation: Rates) -> np.ndarray:
    """The label target `index` is made from: a copy, eroded, then dilated."""
    out = label.copy()
    radius = _rate(erosion, index)
    if radius is not None:
        out = seg_widen_border(out, radius)
    radius = _rate(dilation, index)
    if radius is not None:
        out = ndimage.maximum_filter(out, size=_in_plane(out, 2 * radius + 1))
    return out


# --- the target families -------------------------------------------------------------------


def binary(label: np.ndarray, classes: Sequence[str] = ()) -> np.ndarray:
    """'0': label > 0; '0-a-b': label in {a, b}."""
    mask = label > 0 if not classes else np.isin(label, [int(c) for c in classes])
    return mask[np.newaxis].astype(np.float32)


def polarity(label: np.ndarray, exclusive: bool) -> np.ndarray:
    """'1': [odd ids, even ids, all ids] masks; '1-1': int64 0 / 1 (odd) / 2 (even)."""
    odd = (label % 2 == 1) & (label > 0)
    even = (label % 2 == 0) & (label > 0)
    if exclusive:
        classes: np.ndarray = np.maximum(odd.astype(np.int64), 2 * even.astype(np.int64))
        return classes
    return np.stack([odd, even, label > 0]).astype(np.float32)


def affinity(
    label: np.ndarray, offsets: Sequence[int] = (1, 1, 1), version: str = "v1"
) -> np.ndarray:
    """'2' / '2-z-y-x-v1': channel per axis, 1 where the voxel and the one `d` before it
    (edge-padded) share a non-zero id; so the first `d` planes compare with themselves and
    carry the foreground mask. '-v2' compares the voxels `d` before and `d` after instead.
    2D labels give the (y, x) channels."""
    deltas = list(offsets)[-label.ndim :]
    before = 1 if version == "v1" else 0
    channels = []
    for axis, d in enumerate(deltas):
        pad = [(0, 0)] * label.ndim
        pad[axis] = (d, 0 if version == "v1" else d)
        padded = np.pad(label, pad, mode="edge")
        size = label.shape[axis]
        first = np.take(padded, np.arange(0, size), axis=axis)
        second = label if before else np.take(padded, np.arange(2 * d, 2 * d + size), axis=axis)
        channels.append((first == second) & (first != 0) & (second != 0))
    return np.stack(channels).astype(np.float32)


def _dense_ids(label: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..N (0 stays 0), so `find_objects` lists N boxes whatever the ids."""
    values, inverse = np.unique(label, return_inverse=True)
    dense = inverse.reshape(label.shape).astype(np.int64)
    if values[0] != 0:
        dense += 1
    return dense


def _components(label: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """Connected components of equal ids (skimage `label` semantics: full connectivity
    unless `structure` says otherwise), numbered from 1; each id is labelled within its
    bounding box."""
    seg = _dense_ids(label)
    out = np.zeros(label.shape, np.int64)
    if structure is None:
        structure = np.ones((3,) * label.ndim, bool)
    count = 0
    for value, box in enumerate(ndimage.find_objects(seg), start=1):
        if box is None:
            continue
        mask = seg[box] == value
        parts, n = ndimage.label(mask, structure=structure)
        out[box][mask] = parts[mask] + count
        count += n
    return out


def _in_plane_structure(axis: int) -> np.ndarray:
    """Full 2D connectivity within the planes normal to `axis`, none across them."""
    structure = np.zeros((3, 3, 3), bool)
    index: list[int | slice] = [slice(None)] * 3
    index[axis] = 1
    structure[tuple(index)] = True
    return structure


def small_objects(label: np.ndarray, threshold: int, ratio: int) -> np.ndarray:
    """'3-T-R-X': components smaller than T per z-slice, or than T // R per y- and x-plane
    (each plane's components labelled separately, in one pass per axis)."""
    if label.ndim != 3:
        raise TargetError("the small-object target '3' needs a 3D label")
    mask = np.zeros(label.shape, bool)
    for axis, limit in ((0, threshold), (1, threshold // ratio), (2, threshold // ratio)):
        parts = _components(label, _in_plane_structure(axis))
        small = np.bincount(parts.ravel()) < limit
        small[0] = False
        mask |= small[parts]
    return mask[np.newaxis].astype(np.float32)


def contour(label: np.ndarray, half: int, background: bool) -> np.ndarray:
    """'4-S-B', per z-slice. B=1: where the label changes along y or x (a [1, 0, -1]
    difference with edge-replicated borders), dilated by a (2S+1)^2 box. B=0: where the
    (2S+1)^2 window holds two different non-zero ids (instance-instance edges only)."""
    seg = label[np.newaxis] if label.ndim == 2 else label
    if background:
        edges = np.zeros(seg.shape, np.uint8)
        for z, plane in enumerate(seg):
            # The [1, 0, -1] differences over a symmetric (edge-repeating) border.
            padded = np.pad(plane, 1, mode="symmetric")
            dy = padded[2:, 1:-1] != padded[:-2, 1:-1]
            dx = padded[1:-1, 2:] != padded[1:-1, :-2]
            edges[z] = dy | dx
        out = ndimage.maximum_filter(edges, size=(1, 2 * half + 1, 2 * half + 1))
    else:
        out = _distinct_ids_in_window(seg, half).astype(np.uint8)
    result: np.ndarray = (out if label.ndim == 2 else out[np.newaxis]).astype(np.float32)
    return result


def _fill_small_holes(
    mask: np.ndarray, cut: Sequence[tuple[int, int]], whole: Callable[[np.ndarray], int]
) -> np.ndarray:
    """Background components (face connectivity) of at most HOLE_SIZE become foreground.

    `mask` may be a crop of the instance's mask: `cut` lists the (axis, side) faces where
    the crop cuts the volume (side 0 the low face, -1 the high one). A component touching a
    cut face goes on outside the crop; `whole(part)` measures it in the uncropped volume,
    only when the crop alone would call it small (rare)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    holes, _ = ndimage.label(~mask, structure=structure)
    sizes = np.bincount(holes.ravel())
    small = sizes <= HOLE_SIZE
    small[0] = False
    touching = {
        int(c) for axis, side in cut for c in np.unique(np.take(holes, side, axis=axis)) if c
    }
    for component in touching & set(np.nonzero(small)[0].tolist()):
        small[component] = whole(holes == component) <= HOLE_SIZE
    result: np.ndarray = mask | small[holes]
    return result


def _ball(radius: int, ndim: int) -> np.ndarray:
    grid = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(ndim))]
    squared = np.zeros([2 * radius + 1] * ndim)
    for g in grid:
        squared = squared + g**2
    result: np.ndarray = squared <= radius**2
    return result


def instance_distance(
    label: np.ndarray, spacing: Sequence[float], padding: bool, erosion: int
) -> np.ndarray:
    """Per instance (connected components of equal ids): holes filled, optionally eroded by
    a disk / ball, EDT normalised by its own maximum; background -1.

    Each instance is processed in its bounding box grown by `erosion + 3`, which gives the
    same values as the whole volume: the grown faces are background, so every distance,
    erosion and hole inside is what it is in the volume (see `_fill_small_holes`)."""
    seg = _components(label)
    if padding:
        seg = np.pad(seg, EDT_PAD)
    out = np.full(seg.shape, -1.0)
    footprint = _ball(erosion, seg.ndim) if erosion > 0 else None
    margin = erosion + 3
    structure = ndimage.generate_binary_structure(seg.ndim, 1)
    for index, box in enumerate(ndimage.find_objects(seg), start=1):
        if box is None:
            continue
        crop = tuple(
            slice(max(0, b.start - margin), min(n, b.stop + margin))
            for b, n in zip(box, seg.shape, strict=True)
        )
        cut = [
            (axis, side)
            for axis, (c, n) in enumerate(zip(crop, seg.shape, strict=True))
            for side, is_cut in ((0, c.start > 0), (-1, c.stop < n))
            if is_cut
        ]

        def whole(part: np.ndarray, index: int = index, crop: tuple[slice, ...] = crop) -> int:
            """Size in the whole volume of the background component `part` of the crop."""
            labelled = ndimage.label(seg != index, structure=structure)[0]
            return int(np.count_nonzero(labelled == labelled[crop][part][0]))

        mask = _fill_small_holes(seg[crop] == index, cut, whole)
        if footprint is not None:
            mask = ndimage.binary_erosion(mask, footprint, border_value=1)
        if not mask.any():
            continue
        edt = ndimage.distance_transform_edt(mask, sampling=spacing)
        energy = edt / (edt.max() + EPS)
        region = out[crop]
        region[mask] = np.maximum(region[mask], energy[mask])
    if padding:
        out = out[tuple(slice(EDT_PAD, -EDT_PAD) for _ in range(out.ndim))]
    return out


def quantize_energy(energy: np.ndarray, levels: int = 10) -> np.ndarray:
    """0..levels: background 0, energy in [k/levels, (k+1)/levels) -> k + 1."""
    bins = np.array([-1.0, *(k / levels for k in range(levels)), 1.1])
    result: np.ndarray = np.digitize(energy, bins) - 1
    return result


def instance_edt(label: np.ndarray, fields: Sequence[str]) -> np.ndarray:
    """'5-M-P-Q-Z-E' on a 3D label: '2d' per z-slice, '3d' with spacing (Z, 1, 1)."""
    mode, padding, quantize, z_res, erosion = fields
    if label.ndim != 3:
        raise TargetError("instance distance targets '5-...' need a 3D label")
    pad, radius = bool(int(padding)), int(erosion)
    if mode == "3d":
        out = instance_distance(label, (float(z_res), 1.0, 1.0), pad, radius)
    else:
        out = np.stack([instance_distance(s, (1.0, 1.0), pad, radius) for s in label])
    if int(quantize):
        out = quantize_energy(out)
    return out[np.newaxis].astype(np.float32)


def _scaled_edt(mask: np.ndarray, spacing: Sequence[float], alpha: float) -> np.ndarray:
    if mask.all():
        return np.full(mask.shape, UNIFORM_DISTANCE)
    result: np.ndarray = ndimage.distance_transform_edt(mask, sampling=spacing) / alpha
    return result


def semantic_edt(label: np.ndarray, mode: str, alpha_fg: float, alpha_bg: float) -> np.ndarray:
    """'6-M-A-B': tanh(EDT(fg) / A - EDT(bg) / B); '2d' per z-slice, '3d' spacing (6, 1, 1);
    a 2D label uses its 2D EDT in either mode."""
    fg = label != 0
    if label.ndim == 2 or mode == "3d":
        spacing = (1.0, 1.0) if label.ndim == 2 else (6.0, 1.0, 1.0)
        dist = _scaled_edt(fg, spacing, alpha_fg) - _scaled_edt(~fg, spacing, alpha_bg)
    else:
        dist = np.stack(
            [_scaled_edt(f, (1, 1), alpha_fg) - _scaled_edt(~f, (1, 1), alpha_bg) for f in fg]
        )
    result: np.ndarray = np.tanh(dist)[np.newaxis].astype(np.float32)
    return result


# Neighbour order of the diffusion: self, up, down, left, right, then the diagonals.
_NEIGHBOURS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _center(ys: np.ndarray, xs: np.ndarray) -> tuple[int, int]:
    """The pixel of the instance closest to its median (first on ties)."""
    ym, xm = np.median(ys), np.median(xs)
    k = int(np.argmin((xs - xm) ** 2 + (ys - ym) ** 2))
    return int(ys[k]), int(xs[k])


def diffusion_flows(masks: np.ndarray) -> np.ndarray:
    """Cellpose flows of a 2D instance map: heat diffused from each instance's centre for
    2 x (largest bounding-box height + width + 2) steps, log(1 + T), then the normalised
    central-difference gradient (dy, dx) inside the instances; 0 elsewhere."""
    height, width = masks.shape
    padded = np.zeros((height + 2, width + 2), np.int64)
    padded[1:-1, 1:-1] = masks
    ys, xs = np.nonzero(padded)
    flows = np.zeros((2, height, width))
    if ys.size == 0:
        return flows
    ny = np.stack([ys + dy for dy, _ in _NEIGHBOURS])
    nx = np.stack([xs + dx for _, dx in _NEIGHBOURS])
    same = padded[ny, nx] == padded[ys, xs][np.newaxis]
    centers, extents = [], []
    for index, box in enumerate(ndimage.find_objects(masks), start=1):
        if box is None:
            continue
        iy, ix = np.nonzero(masks[box] == index)
        cy, cx = _center(iy + 1, ix + 1)
        centers.append((cy + box[0].start, cx + box[1].start))
        extents.append(box[0].stop - box[0].start + box[1].stop - box[1].start + 2)
    # One step is a sparse matrix product: row p holds the same-instance neighbours of
    # pixel p in PyTC's neighbour order, so the sum runs in that order and, divided by 9,
    # is bit for bit PyTC's masked mean (a skipped 0 adds nothing).
    row = width + 2
    pixels, neighbours = ys * row + xs, ny * row + nx
    sources = np.array([cy * row + cx for cy, cx in centers])
    keep = same.T  # (pixels, 9), row-major: each pixel's neighbours in order
    step = sparse.csr_matrix(
        (
            np.ones(int(keep.sum())),
            neighbours.T[keep],
            np.concatenate([[0], np.cumsum(keep.sum(1))]),
        ),
        shape=(pixels.size, padded.size),
    )
    heat = np.zeros(padded.size)
    for _ in range(2 * max(extents)):
        heat[sources] += 1
        heat[pixels] = (step @ heat) / len(_NEIGHBOURS)
    heat = np.log1p(heat)
    dy = heat[neighbours[2]] - heat[neighbours[1]]
    dx = heat[neighbours[4]] - heat[neighbours[3]]
    norm = 1e-20 + np.sqrt(dy**2 + dx**2)
    flows[:, ys - 1, xs - 1] = np.stack([dy, dx]) / norm
    return flows


def flows(label: np.ndarray) -> np.ndarray:
    """'7': (2, *S) flows per z-slice; PyTC squeezes the label first, so a (1, y, x) label
    gives (2, y, x)."""
    masks = np.squeeze(label).astype(np.int32)
    if masks.ndim == 2:
        return diffusion_flows(masks).astype(np.float32)
    if masks.ndim != 3:
        raise TargetError("flow targets '7' need a 2D or 3D label")
    out = np.stack([diffusion_flows(plane) for plane in masks], axis=1)
    return out.astype(np.float32)


# --- dispatch --------------------------------------------------------------------------------

# Bare options and their full forms.
_DEFAULT_FIELDS = {"5": ["2d", "0", "0", "5.0", "0"], "6": ["2d", "8", "50"]}


def _fields(option: str, count: int | None) -> list[str]:
    head, *fields = option.split("-")
    fields = fields or _DEFAULT_FIELDS.get(head, [])
    if count is not None and len(fields) != count:
        raise TargetError(f"target {option!r} needs {count} fields after {head!r}")
    return fields


def _ints(option: str, fields: Sequence[str]) -> list[int]:
    try:
        return [int(f) for f in fields]
    except ValueError:
        raise TargetError(f"target {option!r}: the fields must be integers") from None


def _affinity_option(label: np.ndarray, option: str) -> np.ndarray:
    fields = _fields(option, None)
    if not fields:
        return affinity(label)
    if len(fields) != 4 or fields[3] not in ("v1", "v2"):
        raise TargetError(f"affinity {option!r} must be 2-z-y-x-v1 or 2-z-y-x-v2")
    return affinity(label, _ints(option, fields[:3]), fields[3])


def _polarity_option(label: np.ndarray, option: str) -> np.ndarray:
    fields = _fields(option, None)
    if fields and _ints(option, fields[:1])[0] == 0:
        raise TargetError(f"target {option!r}: the exclusive polarity form is '1-1'")
    return polarity(label, exclusive=bool(fields))


def _flows_option(label: np.ndarray, option: str) -> np.ndarray:
    out = flows(label)
    if "0" not in option.split("-")[1:]:
        return out
    mask = binary(label)
    return np.concatenate([out, mask.reshape((1, *out.shape[1:]))])


def _contour_option(label: np.ndarray, option: str) -> np.ndarray:
    half, background = _ints(option, _fields(option, 2))
    return contour(label, half, bool(background))


def _dilated_edt_option(label: np.ndarray, option: str) -> np.ndarray | None:
    _, size, *rest = option.split("-")
    if int(size) == 0:
        return None
    return instance_edt(ndimage.maximum_filter(label, int(size)), _fields("-".join(rest), 5))


_MAKERS: dict[str, Callable[[np.ndarray, str], np.ndarray | None]] = {
    "0": lambda label, o: binary(label, _fields(o, None)),
    "1": _polarity_option,
    "2": _affinity_option,
    "3": lambda label, o: small_objects(label, *_ints(o, _fields(o, 3))[:2]),
    "4": _contour_option,
    "5": lambda label, o: instance_edt(label, _fields(o, 5)),
    "6": lambda label, o: semantic_edt(label, _fields(o, 3)[0], *map(float, _fields(o, 3)[1:])),
    "7": _flows_option,
    "8": _dilated_edt_option,
    "9": lambda label, o: label.astype(np.int64),
}


def make_target(label: np.ndarray, option: str) -> np.ndarray | None:
    """The target of one option for one (already eroded / dilated) label crop. Every form
    PyTC v1.0.0 can make is made here, also those its Criterion cannot train ('8-D-...'
    with D = 0 gives None, as in PyTC); `backend.config.targets` says which train."""
    text = str(option)
    maker = _MAKERS.get(text[:1])
    if maker is None:
        raise TargetError(f"{text!r} is not a PyTC target option")
    return maker(label, text)


def seg_to_targets(
    label: np.ndarray, options: Sequence[str], erosion: Rates = None, dilation: Rates = None
) -> list[np.ndarray | None]:
    """One target per option, each from its own eroded / dilated copy of `label`."""
    return [
        make_target(prepare_label(label, i, erosion, dilation), str(option))
        for i, option in enumerate(options)
    ]
