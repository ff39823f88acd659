"""A fast, stateless Poisson sampler for the shot noise of paper §3.1.3 (PN), in TensorFlow.

`tf.random.stateless_poisson` is exact but slow on large images; `sample_poisson` draws exact
counts on a grid of rates from precomputed CDF tables and a normal approximation with a
skewness term above rate 32, with bounded total-variation error (stated below and checked in
tests/test_simulation.py). `sample_poisson_exact` is TensorFlow's sampler, the reference.
"""
import numpy as np
import tensorflow as tf
from scipy import stats

# Fast Poisson sampler (see `sample_poisson`). A rate below _TABLE_LIMIT is split into a grid part
# g / _TABLE_STEPS and a remainder delta < 1 / _TABLE_STEPS. The grid part is drawn exactly by
# inverting a precomputed CDF table: a guide table gives the count directly for a uniform falling in
# a cell without a CDF jump, and the few uniforms in cells with a jump are resolved by a search on
# the CDF table. The remainder adds Bernoulli(1 - exp(-delta)), i.e. Poisson(delta) with counts >= 2
# lumped into 1: total-variation error <= delta^2 / 2 < 4.9e-4. Rates of _TABLE_LIMIT and more use
# a rounded normal quantile with the Cornish-Fisher skewness term, lambda + sqrt(lambda) z +
# (z^2 - 1) / 6: total-variation distance to Poisson(lambda) < 1e-3 at 32, falling like 0.02 /
# lambda (checked numerically in tests/test_simulation.py).
_TABLE_LIMIT = 32
_TABLE_STEPS = 32
_GUIDE_CELLS = 256
_DIRTY = 1 << 16  # added to guide entries whose cell contains a CDF jump
_TABLE_CACHE = {}


def _poisson_tables():
    """Float32 CDF table [rows * width], int32 guide table [rows * cells], width (built once)."""
    if not _TABLE_CACHE:
        width = int(np.ceil(_TABLE_LIMIT + 10 * np.sqrt(_TABLE_LIMIT) + 10))
        rates = np.arange(_TABLE_LIMIT * _TABLE_STEPS) / _TABLE_STEPS
        cdf = stats.poisson.cdf(np.arange(width)[None], rates[:, None]).astype(np.float32)
        cdf[:, -1] = 1.0  # the search never runs past the table
        starts = np.arange(_GUIDE_CELLS, dtype=np.float32) / _GUIDE_CELLS
        guide = np.stack([np.searchsorted(row, starts, side="left") for row in cdf])
        # Clean cell: the count for the cell's first uniform also holds for its last one.
        ends = np.stack([np.searchsorted(row, starts + 1.0 / _GUIDE_CELLS, side="left")
                         for row in cdf])
        guide = np.where(ends > guide, guide + _DIRTY, guide).astype(np.int32)
        _TABLE_CACHE.update(cdf=cdf.ravel(), guide=guide.ravel(), width=width)
    return _TABLE_CACHE["cdf"], _TABLE_CACHE["guide"], _TABLE_CACHE["width"]


def sample_poisson(rate, seed):
    """Draw Poisson counts with the given rates (stateless, fast, provably close).

    Below rate 32: exact on the grid of rates k / 32 (inversion of a float32 CDF table), within
    total variation 4.9e-4 between grid points. From 32 on: a rounded Cornish-Fisher normal
    quantile, within total variation 1e-3 (0.02 / rate). Several times faster than
    `tf.random.stateless_poisson` on CPU (benchmarks/simulation.py).

    Args:
      rate: float32 tensor, any shape, >= 0 (the Poisson mean lambda).
      seed: int32/int64 [2] stateless seed.
    Returns:
      float32 tensor of counts (non-negative integers), same shape as `rate`.
    """
    cdf_values, guide_values, width = _poisson_tables()
    cdf_table = tf.constant(cdf_values)
    guide_table = tf.constant(guide_values)
    rate = tf.maximum(tf.convert_to_tensor(rate, tf.float32), 0.0)
    shape = tf.shape(rate)
    rate = tf.reshape(rate, [-1])
    size = tf.shape(rate)
    grid_seed, remainder_seed, normal_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    large = tf.cast(rate >= _TABLE_LIMIT, tf.float32)
    small_rate = rate * (1.0 - large)  # large rates take row 0, whose cells never need a search
    grid = tf.floor(small_rate * _TABLE_STEPS)
    # Grid part: guide table, then a CDF search for the uniforms in cells with a jump.
    uniform = tf.random.stateless_uniform(size, grid_seed)
    row = tf.cast(grid, tf.int32)
    code = tf.gather(guide_table, row * _GUIDE_CELLS + tf.cast(uniform * _GUIDE_CELLS, tf.int32))
    dirty = tf.where(code >= _DIRTY)[:, 0]
    count = code % _DIRTY
    dirty_uniform = tf.gather(uniform, dirty)
    dirty_base = tf.gather(row, dirty) * width

    def unfinished(dirty_count):
        return tf.reduce_any(dirty_uniform > tf.gather(cdf_table, dirty_base + dirty_count))

    def step(dirty_count):
        return [dirty_count + tf.cast(
            dirty_uniform > tf.gather(cdf_table, dirty_base + dirty_count), tf.int32)]

    dirty_count = tf.while_loop(unfinished, step, [tf.gather(count, dirty)])[0]
    count = tf.tensor_scatter_nd_update(count, dirty[:, None], dirty_count)
    # Remainder part, rate < 1 / _TABLE_STEPS: one count with probability 1 - exp(-delta).
    remainder = small_rate - grid * (1.0 / _TABLE_STEPS)
    extra = tf.cast(tf.random.stateless_uniform(size, remainder_seed) > tf.exp(-remainder),
                    tf.int32)
    exact = tf.cast(count + extra, tf.float32)
    # Large rates: lambda + sqrt(lambda) z + (z^2 - 1) / 6, rounded.
    normal = tf.random.stateless_normal(size, normal_seed)
    quantile = rate + tf.sqrt(rate) * normal + (normal * normal - 1.0) * (1.0 / 6.0)
    approximate = tf.maximum(tf.floor(quantile + 0.5), 0.0)
    return tf.reshape(exact + large * (approximate - exact), shape)


def sample_poisson_exact(rate, seed):
    """Exact Poisson counts via tf.random.stateless_poisson (the slower reference sampler)."""
    rate = tf.convert_to_tensor(rate, tf.float32)
    return tf.random.stateless_poisson(tf.shape(rate), seed, tf.maximum(rate, 0.0),
                                       dtype=tf.float32)
