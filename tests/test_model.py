"""The GPT around the attention: rotary positions, the padded vocabulary, the losses, last-position logits."""

import pytest
import torch
from references import rotary as reference_rotary
from test_attention import VOCAB, gpt_config, make_gpt
from test_equal_treatment import ADAMW, SCHEDULE

from latentlm.generate import generate
from latentlm.lit import LitGPT
from latentlm.model import GPT
from latentlm.model.rope import Rotary


def test_rotary_scores_depend_only_on_the_position_difference():
    rotary = Rotary(16, max_seq_len=64)
    q, k = torch.randn(2, 1, 3, 16), torch.randn(2, 1, 3, 16)  # (B, one position, heads, dim)

    def score(m: int, n: int) -> torch.Tensor:
        return (rotary(q, m) * rotary(k, n)).sum(-1)

    for m in (3, 20, 58):
        torch.testing.assert_close(score(m, m + 5), score(0, 5))
        torch.testing.assert_close(score(m + 5, m), score(5, 0))
    assert (score(0, 5) - score(0, 6)).abs().min() > 1e-3  # and the difference itself matters
    torch.testing.assert_close(rotary(q, 0), q)
    seq = torch.randn(2, 30, 1, 16, dtype=torch.float64)
    torch.testing.assert_close(rotary(seq, 7)[:, :, 0], reference_rotary(seq[:, :, 0], start=7), rtol=0, atol=1e-6)


def padded_logits_win(model: GPT) -> None:
    """Make the head score every padding id (vocab_size..padded_vocab_size) far above every real token."""

    def boost(module, args, logits):
        return torch.cat((logits[..., :VOCAB], logits[..., VOCAB:] + 1e4), dim=-1)

    assert model.padded_vocab_size > model.vocab_size == VOCAB
    model.lm_head.register_forward_hook(boost)


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    shifted = z - z.max(dim=-1, keepdim=True).values
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # steps called without a Trainer
def test_label_smoothing_is_on_the_train_loss_only_and_padding_is_never_a_class():
    eps = 0.1
    torch.manual_seed(0)
    module = LitGPT(gpt_config("mha"), VOCAB, ADAMW, SCHEDULE, label_smoothing=eps)
    net = module.net
    padded_logits_win(net)
    x, y = torch.randint(0, VOCAB, (3, 20)), torch.randint(0, VOCAB, (3, 20))
    logp = log_softmax(net(x)[..., :VOCAB].double())  # over the real vocabulary only
    nll = -logp.gather(-1, y[..., None]).squeeze(-1)
    expected_val = nll.mean()
    expected_train = ((1 - eps) * nll - eps * logp.mean(dim=-1)).mean()  # Szegedy et al. 2016, as PyTorch defines it
    assert abs(expected_train - expected_val) > 1e-3  # the smoothing term is not negligible here
    train = module.training_step((x, y), 0)
    module.validation_step((x, y), 0)
    torch.testing.assert_close(train.double(), expected_train, rtol=1e-6, atol=0)
    val = module.val_loss_sum.compute() / module.val_tokens.compute()
    torch.testing.assert_close(val.double(), expected_val, rtol=1e-6, atol=0)


def test_generate_never_emits_a_padding_id():
    model = make_gpt("mla_rope", dtype=torch.float32)
    padded_logits_win(model)
    prompts = [[5, 17, 3], [7, 1, 4]]
    for temperature in (0.0, 1.0):
        for out in generate(model, prompts, max_new_tokens=20, temperature=temperature, seed=0):
            assert len(out) == 20 and max(out) < VOCAB


@pytest.mark.parametrize("name", ["mha", "mla_rope"])
def test_last_only_gives_the_last_position_and_generate_prefills_with_it(name):
    model = make_gpt(name)
    idx = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(model(idx, last_only=True), model(idx)[:, -1:], rtol=1e-12, atol=1e-12)
    positions = []
    model.lm_head.register_forward_hook(lambda module, args, out: positions.append(args[0].size(1)))
    generate(model, [idx[0].tolist()], max_new_tokens=4, temperature=0)
    assert positions == [1, 1, 1, 1]  # the 9-token prefill computed the head at its last position only
