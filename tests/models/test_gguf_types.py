"""kneuron's Q5_0 / Q5_1 de-quantizers against the gguf package's numpy reference, and their registration."""

import numpy as np
import pytest
import torch

from kneuron.models.gguf_types import EXTRA_TYPES, GGML_Q5_0, GGML_Q5_1, extra_gguf_types

gguf = pytest.importorskip("gguf")


def _random_blocks(type_id: int, count: int, seed: int) -> np.ndarray:
    _, (_, size), _ = EXTRA_TYPES[type_id]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(count, size), dtype=np.uint8)
    halves = 2 if type_id == GGML_Q5_1 else 1  # finite float16 scales (and minimum)
    raw[:, :2 * halves] = rng.normal(0, 0.05, size=(count, halves)).astype(np.float16).view(np.uint8)
    return raw


@pytest.mark.parametrize("type_id", [GGML_Q5_0, GGML_Q5_1])
def test_matches_the_gguf_package(type_id):
    raw = _random_blocks(type_id, 64, seed=type_id)
    quant = gguf.GGMLQuantizationType(type_id)
    expected = gguf.quants.dequantize(raw.reshape(-1), quant).reshape(64, 32)
    _, _, function = EXTRA_TYPES[type_id]
    got = function(torch.from_numpy(raw), torch.float32).numpy()
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_registered_only_inside_the_block_and_only_when_missing():
    dequant = pytest.importorskip("transformers.integrations.gguf.dequant")
    before = (dict(dequant.GGML_BLOCK), dict(dequant.GGML_NAME), dict(dequant._DEQUANT))
    with extra_gguf_types() as added:
        for type_id in (GGML_Q5_0, GGML_Q5_1):
            assert type_id in dequant.GGML_BLOCK
        raw = _random_blocks(GGML_Q5_0, 4, seed=1)
        flat = dequant.dequantize(torch.from_numpy(raw.reshape(-1)), GGML_Q5_0)
        reference = gguf.quants.dequantize(raw.reshape(-1), gguf.GGMLQuantizationType.Q5_0)
        np.testing.assert_array_equal(flat.numpy(), reference.astype(np.float32))
    assert (dict(dequant.GGML_BLOCK), dict(dequant.GGML_NAME), dict(dequant._DEQUANT)) == before
    assert set(added) <= {"Q5_0", "Q5_1"}


def test_restored_after_an_exception():
    dequant = pytest.importorskip("transformers.integrations.gguf.dequant")
    before = dict(dequant.GGML_BLOCK)
    with pytest.raises(RuntimeError), extra_gguf_types():
        raise RuntimeError("boom")
    assert dict(dequant.GGML_BLOCK) == before
