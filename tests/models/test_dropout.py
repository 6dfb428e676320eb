"""The dropout mask (jaxseg.models.layers.keep_mask): its definition against numpy, its keep
rate, independence between neighbours, keys and sites, and purity under jit and vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import layers


def numpy_mask(key, keep, shape):
    """The documented definition, in numpy uint32 arithmetic (wrapping multiply)."""
    s0, s1 = (np.uint32(v) for v in np.asarray(jax.random.bits(key, (2,), jnp.uint32)))

    def h(x):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))

    with np.errstate(over="ignore"):
        counter = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
        bits = h(h(counter ^ s0) + s1)
    return bits < np.uint32(round(keep * 2**32))


def test_mask_is_the_documented_hash():
    key = jax.random.key(11)
    np.testing.assert_array_equal(np.asarray(layers.keep_mask(key, 0.8, (3, 17, 9))), numpy_mask(key, 0.8, (3, 17, 9)))


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.95])
def test_keep_rate_within_binomial_noise(keep):
    n = 1_000_000
    kept = np.asarray(layers.keep_mask(jax.random.key(3), keep, (n,))).mean()
    assert abs(kept - keep) < 5 * np.sqrt(keep * (1 - keep) / n)


def _correlation(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return np.corrcoef(a, b)[0, 1]


def test_neighbours_keys_and_sites_are_uncorrelated():
    shape = (8, 64, 64, 16)  # a decoder activation: batch, rows, columns, channels
    bound = 5 / np.sqrt(np.prod(shape) / 2)
    mask = np.asarray(layers.keep_mask(jax.random.key(0), 0.8, shape))
    for axis in range(4):  # each element against its neighbour along every axis
        first = np.take(mask, np.arange(shape[axis] - 1), axis=axis)
        second = np.take(mask, np.arange(1, shape[axis]), axis=axis)
        assert abs(_correlation(first, second)) < bound, axis
    other_key = np.asarray(layers.keep_mask(jax.random.key(1), 0.8, shape))
    assert abs(_correlation(mask, other_key)) < bound
    x = jnp.ones(shape)
    site_a = np.asarray(layers.dropout(x, 0.2, jax.random.key(0), 1)) > 0
    site_b = np.asarray(layers.dropout(x, 0.2, jax.random.key(0), 2)) > 0
    assert abs(_correlation(site_a, site_b)) < bound


def test_pure_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(5), 4)
    one_by_one = np.stack([np.asarray(layers.keep_mask(k, 0.7, (5, 6))) for k in keys])
    vmapped = jax.jit(jax.vmap(lambda k: layers.keep_mask(k, 0.7, (5, 6))))(keys)
    np.testing.assert_array_equal(np.asarray(vmapped), one_by_one)
    assert len({m.tobytes() for m in one_by_one}) == 4  # every key its own mask
    raw = jax.random.PRNGKey(5)  # raw uint32 keys (explain's seed) work the same way
    np.testing.assert_array_equal(np.asarray(layers.keep_mask(raw, 0.7, (5, 6))), numpy_mask(raw, 0.7, (5, 6)))


def test_a_mask_past_32_bit_counters_is_refused():
    with pytest.raises(ValueError, match="32-bit counters"):
        layers.keep_mask(jax.random.key(0), 0.8, (2**16, 2**16))
