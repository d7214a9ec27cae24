"""The GPT around the attention: last-position logits."""

import pytest
import torch
from test_attention import VOCAB, make_gpt

from latentlm.generate import generate


@pytest.mark.parametrize("name", ["mha", "mla_rope"])
def test_last_only_gives_the_last_position_and_generate_prefills_with_it(name):
    model = make_gpt(name)
    idx = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(model(idx, last_only=True), model(idx)[:, -1:], rtol=1e-12, atol=1e-12)
    positions = []
    model.lm_head.register_forward_hook(lambda module, args, out: positions.append(args[0].size(1)))
    generate(model, [idx[0].tolist()], max_new_tokens=4, temperature=0)
    assert positions == [1, 1, 1, 1]  # the 9-token prefill computed the head at its last position only
