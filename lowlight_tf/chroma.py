"""Chroma noise in flat dark regions: the red/green blotches an enhancer leaves in shadows.

PSNR and SSIM hardly move when the shadows of an enhanced image carry coloured noise, yet it is
what the eye sees first in the darkest scenes. `chroma_noise(image, reference)` measures it as
a standard deviation in 8-bit units, on regions chosen on the reference so that an enhanced
image and its reference are measured on the same pixels:

1. Cut the reference into 16x16 blocks (BLOCK; the right and bottom remainders are left out)
   and compute BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B.
2. Dark blocks: reference mean luma at most the 25th percentile of the image's block means
   (DARK_PERCENTILE) and at most 64 of 255 (DARK_LEVEL, a quarter of full scale), so a
   well-lit image has no dark blocks and measures NaN.
3. Flat blocks: among the dark ones, the lowest-texture half (FLAT_FRACTION): texture is the
   RMS of the reference luma after removing the block's best-fit plane, so a smooth shading
   counts as flat and edges or pattern do not.
4. In the selected blocks of `image`, take the BT.601 chroma channels (full range, as JPEG:
   Cb = -0.168736 R - 0.331264 G + 0.5 B, Cr = 0.5 R - 0.418688 G - 0.081312 B) and
   subtract each block's and channel's least-squares plane a + b x + c y: a colour cast and a
   slow colour gradient are not noise. A plane rather than a small local mean (e.g. 5x5 box)
   so that blotches of up to about a block's size still count.
5. The result is the pooled standard deviation of the residual over the selected blocks and
   both channels: sqrt(sum(residual^2) / (blocks * 2 * (256 - 3))), the 3 plane parameters per
   block and channel taken out of the degrees of freedom, so i.i.d. noise of std s in Cb and
   Cr measures s.

`filter_chroma(image)` removes such noise after enhancement: a guided filter (He et al., "Guided
Image Filtering", ECCV 2010) of Cb and Cr with the image's own luma as the guide, so chroma is
averaged over a (2 * FILTER_RADIUS + 1)^2 window where the luma is flat and kept where the luma
has an edge; luma itself is untouched. It is written once, in TensorFlow ops
(`filter_chroma_tensor`), so the exported SavedModel and TFLite files (lowlight_tf.export) apply
the same filter as tools/enhance; box means are separable average pools over edge-mirrored
images (scipy's "reflect"), which TFLite runs with builtin ops.

The measure is NumPy (float64); the filter float32.
"""
import numpy as np
import tensorflow as tf

BLOCK = 16  # pixels per side of a block
DARK_PERCENTILE = 25.0  # dark: block mean luma <= this percentile of the image's block means
DARK_LEVEL = 64.0  # ... and <= this luma (8-bit), a quarter of full scale
FLAT_FRACTION = 0.5  # flat: the lowest-texture half of the dark blocks
# BT.601 luma and full-range chroma (JPEG/JFIF), rows Y, Cb, Cr, columns R, G, B.
YCBCR = np.array([[0.299, 0.587, 0.114],
                  [-0.168736, -0.331264, 0.5],
                  [0.5, -0.418688, -0.081312]])
_PLANE_PARAMETERS = 3
# The chroma filter's window radius (pixels) and regulariser (a luma variance, [0, 1] units: luma
# texture below about sqrt(FILTER_EPS) = 0.1 of full scale counts as flat). Chosen on the ELIEI
# rgb_dev calibration pairs (RESULTS.md, session 11): the strongest chroma smoothing within 0.01
# dB of the best PSNR over radii 4, 8, 16 and eps 1e-4, 1e-3, 1e-2.
FILTER_RADIUS = 8
FILTER_EPS = 1e-2
FILTER_STRIP_ROWS = 512  # filter_chroma works on strips of this many rows (memory)
# The measure in one sentence, for reports.
DEFINITION = (
    f"std (8-bit units) of the BT.601 Cb and Cr channels in the reference's flat dark regions "
    f"({BLOCK}x{BLOCK} blocks whose mean reference luma is at most the {DARK_PERCENTILE:g}th "
    f"percentile of the image's block means and at most {DARK_LEVEL:g} of 255, the "
    f"{FLAT_FRACTION:.0%} of those with the least luma texture), each block's chroma plane "
    "(colour cast and gradient) removed")
_RANGE_TOLERANCE = 1e-3


def _check_image(name, image):
    """float64 [H, W, 3] from an array in [0, 255]; ValueError otherwise."""
    image = np.asarray(image, np.float64)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be one [H, W, 3] RGB image; got shape {image.shape}.")
    if image.size:
        low, high = float(image.min()), float(image.max())
        if not np.isfinite(low + high) or low < -_RANGE_TOLERANCE or (
                high > 255.0 + _RANGE_TOLERANCE):
            raise ValueError(f"{name} must have values in [0, 255]; got [{low}, {high}] (scale "
                             "[0, 1] images by 255 first).")
    return image


def _blocks(channels):
    """[H, W, C] -> [N, BLOCK * BLOCK, C]: whole blocks in row-major order, remainders cut."""
    rows, columns = channels.shape[0] // BLOCK, channels.shape[1] // BLOCK
    cut = channels[:rows * BLOCK, :columns * BLOCK]
    blocks = cut.reshape(rows, BLOCK, columns, BLOCK, channels.shape[-1]).transpose(0, 2, 1, 3, 4)
    return blocks.reshape(rows * columns, BLOCK * BLOCK, channels.shape[-1])


def _plane_residual(blocks):
    """[N, P, C] blocks minus each block's and channel's least-squares plane a + b x + c y."""
    offsets = np.arange(BLOCK, dtype=np.float64) - (BLOCK - 1) / 2.0
    y, x = (g.reshape(-1) for g in np.meshgrid(offsets, offsets, indexing="ij"))
    # On a full square grid 1, x and y are orthogonal: each coefficient is a projection.
    mean = blocks.mean(axis=1, keepdims=True)
    slope_x = np.einsum("npc,p->nc", blocks, x)[:, None] / np.dot(x, x)
    slope_y = np.einsum("npc,p->nc", blocks, y)[:, None] / np.dot(y, y)
    return blocks - mean - slope_x * x[None, :, None] - slope_y * y[None, :, None]


def flat_dark_blocks(reference):
    """Which BLOCK x BLOCK blocks of the reference are dark and flat (module doc, steps 1-3).

    Args:
      reference: float [H, W, 3] in [0, 255] (8-bit units; asserted).

    Returns:
      bool [N] over the whole blocks in row-major order (N = (H // 16) * (W // 16); 0 when
      the image is smaller than a block).

    Raises:
      ValueError: not an [H, W, 3] image, or values outside [0, 255].
    """
    reference = _check_image("reference", reference)
    luma = _blocks(reference @ YCBCR[0][:, None])[..., 0]  # [N, P]
    if luma.shape[0] == 0:
        return np.zeros(0, bool)
    means = luma.mean(axis=1)
    dark = (means <= np.percentile(means, DARK_PERCENTILE)) & (means <= DARK_LEVEL)
    if not dark.any():
        return dark
    texture = np.sqrt(np.mean(_plane_residual(luma[..., None])[..., 0] ** 2, axis=1))
    flat = texture <= np.quantile(texture[dark], FLAT_FRACTION)
    return dark & flat


def chroma_noise(image, reference, blocks=None):
    """Pooled std of the chroma noise of `image` in the reference's flat dark blocks.

    Args:
      image: float [H, W, 3] in [0, 255], e.g. an enhanced output rounded to 8 bits, or the
        reference itself (its own, "real", chroma noise).
      reference: float [H, W, 3] in [0, 255], the same size; chooses the blocks.
      blocks: None, or `flat_dark_blocks(reference)` computed once for several images
        measured against the same reference.

    Returns:
      float >= 0 in 8-bit units (the std of Cb and Cr after removing each block's plane, module
      doc step 5), or NaN when no block is dark and flat (a well-lit reference, or an image
      smaller than 16x16).

    Raises:
      ValueError: shapes differ, not [H, W, 3], or values outside [0, 255].
    """
    image = _check_image("image", image)
    selected = flat_dark_blocks(reference) if blocks is None else blocks
    if image.shape != np.shape(reference):
        raise ValueError(f"image {image.shape} and reference {np.shape(reference)} must have "
                         "the same shape.")
    if not selected.any():
        return float("nan")
    chroma = _blocks(image @ YCBCR[1:].T)[selected]  # [n, P, 2]
    residual = _plane_residual(chroma)
    degrees = residual.shape[0] * residual.shape[2] * (BLOCK * BLOCK - _PLANE_PARAMETERS)
    return float(np.sqrt(np.sum(residual ** 2) / degrees))


def _mirrored_indices(length, radius):
    """Source index of each of length + 2 radius positions, the edges mirrored with the edge
    pixel repeated (scipy's "reflect", numpy's "symmetric"), for any length >= 1 (int32)."""
    positions = tf.range(-radius, length + radius) % (2 * length)
    return tf.where(positions < length, positions, 2 * length - 1 - positions)


def _box_mean(planes, radius):
    """Mean of float32 [B, H, W, C] over the (2 radius + 1)^2 window around each pixel."""
    shape = tf.shape(planes)
    size = 2 * radius + 1
    planes = tf.gather(planes, _mirrored_indices(shape[1], radius), axis=1)
    planes = tf.gather(planes, _mirrored_indices(shape[2], radius), axis=2)
    planes = tf.nn.avg_pool2d(planes, ksize=(size, 1), strides=1, padding="VALID")
    return tf.nn.avg_pool2d(planes, ksize=(1, size), strides=1, padding="VALID")


def _check_filter_arguments(radius, eps):
    if int(radius) != radius or radius < 1 or not eps > 0:
        raise ValueError(f"radius must be an integer >= 1 and eps > 0; got {radius} and {eps}.")


def filter_chroma_tensor(images, radius=FILTER_RADIUS, eps=FILTER_EPS):
    """`filter_chroma` as TensorFlow ops on a batch (traceable, exportable to TFLite).

    Args:
      images: float32 [B, H, W, 3] RGB in [0, 1], any H, W >= 1.
      radius, eps: see `filter_chroma`.

    Returns:
      float32 [B, H, W, 3] in [0, 1].
    """
    _check_filter_arguments(radius, eps)
    radius = int(radius)
    transform = tf.constant(YCBCR.T, tf.float32)
    inverse = tf.constant(np.linalg.inv(YCBCR).T, tf.float32)
    ycc = tf.tensordot(tf.convert_to_tensor(images, tf.float32), transform, axes=1)
    luma, chroma = ycc[..., :1], ycc[..., 1:]
    means = _box_mean(tf.concat([luma, chroma, luma * luma, luma * chroma], axis=-1), radius)
    luma_mean, chroma_mean = means[..., :1], means[..., 1:3]
    luma_var = means[..., 3:4] - luma_mean * luma_mean
    slope = (means[..., 4:] - luma_mean * chroma_mean) / (luma_var + eps)
    offset = chroma_mean - slope * luma_mean
    coefficients = _box_mean(tf.concat([slope, offset], axis=-1), radius)
    chroma = coefficients[..., :2] * luma + coefficients[..., 2:]
    rgb = tf.tensordot(tf.concat([luma, chroma], axis=-1), inverse, axes=1)
    return tf.clip_by_value(rgb, 0.0, 1.0)


def filter_chroma(image, radius=FILTER_RADIUS, eps=FILTER_EPS):
    """Smooth the chroma of an enhanced image where its luma is flat (module doc).

    Args:
      image: float [H, W, 3] RGB in [0, 1] (values outside are clipped at the end).
      radius: the box window's radius in pixels, an integer >= 1.
      eps: the guided filter's regulariser, > 0: larger smooths chroma across stronger luma
        texture.

    Returns:
      float32 [H, W, 3] in [0, 1]: the same BT.601 luma, Cb and Cr guided-filtered by it. It is
      computed in strips of FILTER_STRIP_ROWS rows, each with the 2 * radius rows on either
      side that its pixels depend on (two box means), so the result equals the whole-image
      filter while memory stays about one image plus twenty planes of one strip.

    Raises:
      ValueError: not an [H, W, 3] image, radius not an integer >= 1, or eps <= 0.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be one [H, W, 3] RGB image; got shape {image.shape}.")
    _check_filter_arguments(radius, eps)
    reach = 2 * int(radius)
    out = np.empty_like(image)
    for top in range(0, image.shape[0], FILTER_STRIP_ROWS):
        bottom = min(top + FILTER_STRIP_ROWS, image.shape[0])
        start, stop = max(top - reach, 0), min(bottom + reach, image.shape[0])
        strip = filter_chroma_tensor(image[None, start:stop], radius, eps)[0].numpy()
        out[top:bottom] = strip[top - start:bottom - start]
    return out
