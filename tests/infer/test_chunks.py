"""The one pad-chunk-call-strip loop: every call sees exactly ``batch_size`` rows, the padding
never reaches the result, and the result equals the function applied to the whole batch."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.infer.chunks import call_padded, map_chunks


def _rows(n, width=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


@pytest.mark.parametrize("n,batch_size", [(1, 4), (4, 4), (9, 4), (7, 16)])
def test_map_chunks_equals_the_rowwise_function_on_the_whole_batch(n, batch_size):
    x, mask = _rows(n), np.arange(n) % 3 == 0
    seen = []

    def fn(index, chunk, chunk_mask):
        seen.append((index, chunk.shape[0], chunk_mask.shape[0]))
        return {"scaled": jnp.asarray(chunk) * 2 + index * 0, "masked": jnp.where(chunk_mask[:, None], chunk, 0.0)}

    out = map_chunks(fn, x, mask, batch_size=batch_size)
    np.testing.assert_array_equal(out["scaled"], x * 2)
    np.testing.assert_array_equal(out["masked"], np.where(mask[:, None], x, 0.0))
    chunks = -(-n // batch_size)
    assert seen == [(i, batch_size, batch_size) for i in range(chunks)]  # one shape: one compilation
    assert isinstance(out["scaled"], np.ndarray)


def test_the_index_numbers_the_chunks_and_padding_is_zeros():
    x = _rows(5) + 10.0  # no zero rows of its own
    padding_rows = []

    def fn(index, chunk):
        padding_rows.append(int((np.abs(np.asarray(chunk)).sum(axis=1) == 0).sum()))
        return np.full((len(chunk), 1), index, np.int32)

    out = map_chunks(fn, x, batch_size=2)
    assert out[:, 0].tolist() == [0, 0, 1, 1, 2]
    assert padding_rows == [0, 0, 1]


def test_none_passes_through_and_nothing_is_called_for_no_rows():
    calls = []
    out = map_chunks(lambda i, a, b: calls.append(b) or a, _rows(3), None, batch_size=2)
    np.testing.assert_array_equal(out, _rows(3))
    assert calls == [None, None]
    empty = np.zeros((0, 3), np.float32)
    assert map_chunks(lambda i, a: calls.append(a), empty, batch_size=2, empty="nothing") == "nothing"
    assert len(calls) == 2


def test_call_padded_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        call_padded(lambda a: a, 2, _rows(3))
    with pytest.raises(ValueError, match="rows in one chunk"):
        call_padded(lambda a, b: a, 4, _rows(3), _rows(2))
    with pytest.raises(ValueError, match="positive"):
        map_chunks(lambda i, a: a, _rows(3), batch_size=0)
