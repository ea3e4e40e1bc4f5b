"""The two weight digests kneuron stores (atlases, edit files) are pinned: their values on fixed tiny models were
computed with the code of before ``kneuron.models.identity`` (``store.atlas.model_identity`` and
``interventions.live.weights_digest``, commit 2b4ec6a), and files written by earlier kneurons hold them."""

from __future__ import annotations

import pytest
import torch

from kneuron.interventions import update_fact
from kneuron.interventions.edits import weights_digest
from kneuron.models.identity import (
    atlas_fingerprint,
    edit_weights_digest,
    forget_weights_digests,
    model_identity,
)
from tiny_models import tiny_lm

#: family, dtype -> (atlas fingerprint, edit weights digest, atlas fingerprint with an update applied)
PINNED = {
    ("llama", torch.float32): ("be3d2808191a5d21f92f7b53dbdac917",
                               "a5acd2b0e5dabeb114695c7ff28b50961d4302b5650fa2dd4ff5490526a1a6f9",
                               "8151f30908bc57663249711f0a1ce501"),
    ("gpt2", torch.float32): ("084a954bdcfd54738c42c5807b0bf7f5",
                              "6bfc2b15e12c30bd7d8ab43399b1c8c14992fab3406804e4a3cd9c6d204e3eff",
                              "a3327b6aed4162176f9bb7861353a88c"),
    ("bert", torch.float64): ("7c9c71777a883b94d39a5022eaa99034",
                              "a74a76901969eb0ca5dd8376de76c15ba5ade154e4c4e3f3c4862773e35223f3",
                              "aafbbb17e80e2fb3cc99e0ab250c6b37"),
}


def fixed(family: str, dtype: torch.dtype):
    """A tiny model whose floating tensors are fixed ramps (not random numbers), so the digests depend on the
    tensors' names, shapes, dtypes and these values only."""
    lm = tiny_lm(family, dtype=dtype)
    with torch.no_grad():
        for i, (_, tensor) in enumerate(sorted(lm.model.state_dict(keep_vars=True).items())):
            if tensor.is_floating_point():
                ramp = torch.linspace(-1.0, 1.0, tensor.numel(), dtype=torch.float64).reshape(tensor.shape)
                tensor.copy_(ramp.add(i / 100).to(tensor.dtype))
    return lm


@pytest.mark.parametrize(("family", "dtype"), list(PINNED))
def test_digests_are_the_stored_ones(family, dtype):
    atlas, edit, atlas_edited = PINNED[family, dtype]
    lm = fixed(family, dtype)
    identity = model_identity(lm)
    assert identity == {"model": f"tiny-{family}", "family": family, "kind": "mlm" if family == "bert" else "causal",
                        "n_layers": 2, "n_neurons": 32, "dtype": str(dtype).removeprefix("torch."),
                        "fingerprint": atlas}
    assert atlas_fingerprint(lm) == atlas
    assert edit_weights_digest(lm) == edit == weights_digest(lm)
    update = update_fact(lm, [(0, 3), (1, 5)], "Paris", "Rome")
    assert update.model["weights"] == edit
    with update.applied(lm):
        assert atlas_fingerprint(lm) == atlas_edited  # the atlas sees the edited weights
        assert weights_digest(lm) == edit  # an edit's digest reads live edits as undone
        forget_weights_digests(lm)
        assert weights_digest(lm) == edit
        assert edit_weights_digest(lm) != edit  # without the live edits' originals: the edited weights


def test_the_atlas_module_and_store_use_the_same_identity():
    from kneuron import store
    from kneuron.store import atlas

    assert atlas.model_identity is model_identity and store.model_identity is model_identity


def fingerprint_by_hand(lm) -> str:
    """The atlas fingerprint as it was computed before the cache: every tensor's bytes, then the vocabulary."""
    import hashlib
    import json

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in lm.model.state_dict().items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(sorted(lm.tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    return digest.hexdigest()


def test_the_cached_atlas_fingerprint_is_the_hashed_one_and_follows_every_change(monkeypatch):
    from kneuron.models import identity

    lm = fixed("llama", torch.float32)
    pinned = PINNED["llama", torch.float32][0]
    assert atlas_fingerprint(lm) == pinned == fingerprint_by_hand(lm)
    hashed = []
    real = identity._tensor_bytes
    monkeypatch.setattr(identity, "_tensor_bytes", lambda t: hashed.append(1) or real(t))
    assert atlas_fingerprint(lm) == pinned and model_identity(lm)["fingerprint"] == pinned
    assert not hashed  # the same weights: not hashed again
    assert atlas_fingerprint(lm, fresh=True) == pinned and hashed  # fresh: hashed again, the same value
    weight = lm.ffn_out(1).weight
    with torch.no_grad():  # an in-place write through autograd bumps the version counter
        weight[0, 0] += 1.0
    changed = atlas_fingerprint(lm)
    assert changed != pinned and changed == fingerprint_by_hand(lm)
    with torch.no_grad():
        weight[0, 0] -= 1.0
    assert atlas_fingerprint(lm) == pinned == fingerprint_by_hand(lm)
    update = update_fact(lm, [(0, 3), (1, 5)], "Paris", "Rome")
    with update.applied(lm):  # kneuron's edits, applied and undone
        assert atlas_fingerprint(lm) == PINNED["llama", torch.float32][2] == fingerprint_by_hand(lm)
    assert atlas_fingerprint(lm) == pinned
    other = fixed("llama", torch.float32)
    with torch.no_grad():
        other.ffn_out(0).weight.mul_(2.0)
    lm.model.load_state_dict(other.model.state_dict())  # another checkpoint loaded into the same model
    assert atlas_fingerprint(lm) == fingerprint_by_hand(lm) == atlas_fingerprint(other) != pinned
    lm.model.load_state_dict(fixed("llama", torch.float32).model.state_dict())
    assert atlas_fingerprint(lm) == pinned
    lm.ffn_out(1).weight.data[0, 0] += 1.0  # through .data: the version counter does not see it
    assert atlas_fingerprint(lm) == pinned  # the documented limit of the cache ...
    assert atlas_fingerprint(lm, fresh=True) == fingerprint_by_hand(lm) != pinned  # ... fresh sees it
    lm.ffn_out(1).weight.data[0, 0] -= 1.0
    forget_weights_digests(lm)
    assert atlas_fingerprint(lm) == pinned
    lm.tokenizer.add_tokens(["zzzunseen"])  # a token added: the vocabulary is hashed again
    assert atlas_fingerprint(lm) == fingerprint_by_hand(lm) != pinned
