"""Every variant is trained the same way: the same weight-decay rules, and one validation loss definition."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from latentlm.config import group_choices
from latentlm.lit import LitGPT, no_weight_decay
from tests.test_attention import VOCAB, gpt_config, make_gpt

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True}  # LitGPT's optimizer config, at torch's defaults
SCHEDULE = {"_target_": "latentlm.schedules.warmup_cosine", "_partial_": True, "warmup_steps": 1, "min_lr_ratio": 0.1}

# Per layer, as the parameter names read; the embeddings and the final LayerNorm come once.
NORMS = ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"]
MLP = ["mlp.fc.weight", "mlp.proj.weight"]
GQA_DECAYED = ["attn.wqkv.weight", "attn.wo.weight", *MLP]
LATENT_DECAYED = ["attn.wqkv_a.weight", "attn.wkv_b", "attn.wo.weight", *MLP]
LATENT_PLAIN = [*NORMS, "attn.kv_norm_weight"]  # the per-block RMSNorm gains are 2-D, and are norm gains
EXPECTED = {  # variant: (decayed per layer, not decayed per layer, not decayed once)
    "mha": (GQA_DECAYED, NORMS, ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]),
    "mha_rope": (GQA_DECAYED, NORMS, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "gqa": (GQA_DECAYED, NORMS, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "mqa": (GQA_DECAYED, NORMS, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "mla": (LATENT_DECAYED, LATENT_PLAIN, ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]),
    "mla_rope": (LATENT_DECAYED, LATENT_PLAIN, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "mla_rope_split": (LATENT_DECAYED, LATENT_PLAIN, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "mlra": (LATENT_DECAYED, LATENT_PLAIN, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "mlra_gated": ([*LATENT_DECAYED, "attn.wg.weight"], LATENT_PLAIN, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "gla2": (LATENT_DECAYED, LATENT_PLAIN, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "gla4": (LATENT_DECAYED, LATENT_PLAIN, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "mlra2": (LATENT_DECAYED, LATENT_PLAIN, ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "gta": (GQA_DECAYED, NORMS, ["wte.weight", "ln_f.weight", "ln_f.bias"]),  # wqkv = [W_q; W_u; W_kr]
    "mfa": (["attn.wqkv_a.weight", "attn.wq_b.weight", "attn.wo.weight", *MLP], [*NORMS, "attn.q_norm.weight"],
            ["wte.weight", "ln_f.weight", "ln_f.bias"]),
    "tpa": (["attn.w_ab", "attn.wo.weight", *MLP], NORMS, ["wte.weight", "ln_f.weight", "ln_f.bias"]),  # factor weights
}


def per_layer(names: list[str], layers: int = 2) -> set[str]:
    return {f"blocks.{i}.{n}" for i in range(layers) for n in names}


def test_every_variant_has_listed_weight_decay_groups():
    assert set(EXPECTED) == set(group_choices("attention")), "list the decay groups of every attention config"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_weight_decay_groups(name):
    decayed, plain, plain_once = EXPECTED[name]
    net = make_gpt(name)
    names = {n for n, _ in net.named_parameters()}
    assert no_weight_decay(net) == per_layer(plain) | set(plain_once)
    assert names - no_weight_decay(net) == per_layer(decayed)


def test_q_compression_norm_is_not_decayed():
    net = make_gpt("mla_rope", q_rank=0.5)
    assert {"blocks.0.attn.q_norm.weight", "blocks.1.attn.q_norm.weight"} <= no_weight_decay(net)
    assert "blocks.0.attn.wq_b.weight" not in no_weight_decay(net)


def test_optimizer_applies_the_groups():
    module = LitGPT(gpt_config("mla_rope"), VOCAB, ADAMW, SCHEDULE)
    net = module.net
    module.trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in net.named_parameters()}
    plain = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.0)
    decayed = next(g for g in optimizer.param_groups if g["weight_decay"] > 0.0)
    assert {names[id(p)] for p in plain["params"]} == no_weight_decay(net)
    assert len(plain["params"]) + len(decayed["params"]) == len(names)


def test_val_loss_is_token_weighted_over_the_split():
    """Batches of 3 and 1 sequences: the loss is the mean over all tokens, not the mean of the two batch means."""
    torch.manual_seed(0)
    module = LitGPT(gpt_config("mha"), VOCAB, ADAMW, SCHEDULE)
    net = module.net
    x = torch.randint(0, VOCAB, (4, 16))
    y = torch.randint(0, VOCAB, (4, 16))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=3), verbose=False)
    with torch.no_grad():
        logits = net(x)[..., :VOCAB]
        per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(4, 16)
        hits = (logits.argmax(-1) == y).float()
    expected = per_token.mean().item()
    mean_of_batch_means = (per_token[:3].mean() + per_token[3:].mean()).item() / 2
    assert abs(expected - mean_of_batch_means) > 1e-4  # the batches differ enough to tell the two apart
    (result,) = module.val_history
    assert result["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert result["val_acc"] == pytest.approx(hits.mean().item(), rel=1e-6)
