"""Export a training checkpoint to a Hugging Face transformers folder, loadable offline by AutoModelForCausalLM and
AutoTokenizer.

    python -m latentlm.export ckpt=logs/train/runs/<run>/checkpoints/best.ckpt out=exported/<name>

Each supported (block, attention) pair is exported to the one transformers class that computes the same function,
so its logits match latentlm's to float rounding (tests/test_export.py):

    gpt2  + mha (learned positions)   -> GPT2LMHeadModel
    gpt2  + mha_rope / gqa / mqa      -> Starcoder2ForCausalLM   (LayerNorm + GELU blocks with RoPE; zero biases)
    llama + mha_rope / gqa / mqa      -> LlamaForCausalLM
    llama + mla_rope (one joint latent, no gate) -> DeepseekV3ForCausalLM (dense, no MoE)

Any other pair (MLA with learned positions, split latents, MLRA, GLA, gated, gpt2 blocks with MLA) has no class that
computes it exactly and is refused. The folder holds config.json, model.safetensors (float32, the vocab padding rows
dropped), generation_config.json, and the tokenizer: tokenizer.json, a byte-level BPE with the merges derived from
the tiktoken ranks, and tokenizer_config.json. docs/export.md says what serves each class in vLLM.
"""

import json
import shutil
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import hydra
import tiktoken
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor

from latentlm.config import CONFIG_DIR, ConfigError, fail
from latentlm.data.tokenizer import EOT, GPT2_PATTERN, unicode_to_byte
from latentlm.generate import load_checkpoint
from latentlm.model import GPT
from latentlm.model.attention.gqa import GroupedQueryAttention
from latentlm.model.attention.latent import LatentAttention

SUPPORTED = (
    "block=gpt2 with attention mha (learned positions), block=gpt2 or llama with mha_rope/gqa/mqa, "
    "block=llama with mla_rope (one joint latent in one block, n_branches = n_groups = 1, no gate)"
)


def architecture(model: GPT) -> str:
    """The transformers class that computes `model` exactly; ConfigError naming the supported pairs otherwise."""
    attn = model.blocks[0].attn
    arch = None
    if isinstance(attn, GroupedQueryAttention):
        if attn.rotary is None and model.wpe is not None and attn.n_kv_heads == attn.n_head:
            arch = "GPT2LMHeadModel" if model.block == "gpt2" else None
        elif attn.rotary is not None and model.wpe is None:
            arch = {"gpt2": "Starcoder2ForCausalLM", "llama": "LlamaForCausalLM"}[model.block]
    elif isinstance(attn, LatentAttention):
        one_block = attn.n_branches == attn.n_groups == 1  # MLRA's branches and GLA's groups have no HF class
        deepseek = attn.kv_latent == "joint" and one_block and attn.wg is None and attn.rotary is not None
        if deepseek and model.wpe is None and model.block == "llama":
            arch = "DeepseekV3ForCausalLM"
    if arch is None:
        raise ConfigError(
            f"block={model.block} with attention {model.attention_name} has no exact transformers class; "
            f"export supports {SUPPORTED}"
        )
    return arch


def _rope_theta(model: GPT) -> float:
    return model.blocks[0].attn.rotary.base


def _gpt2(model: GPT, V: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    d = model.wte.weight.size(1)
    config = {
        "model_type": "gpt2",
        "n_embd": d,
        "n_layer": len(model.blocks),
        "n_head": model.blocks[0].attn.n_head,
        "n_inner": 4 * d,
        "n_positions": model.block_size,
        "activation_function": "gelu",  # erf GELU, as F.gelu; HF's default gelu_new is the tanh approximation
        "layer_norm_epsilon": model.ln_f.eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "tie_word_embeddings": True,
    }
    # GPT-2's Conv1D layers store weights (in, out): every nn.Linear weight is transposed. latentlm has no biases in
    # its linear layers; GPT-2 always has them, so they are zeros.
    w = {"transformer.wte.weight": model.wte.weight[:V], "transformer.wpe.weight": model.wpe.weight}
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        for name, linear in (("attn.c_attn", block.attn.wqkv), ("attn.c_proj", block.attn.wo),
                             ("mlp.c_fc", block.mlp.fc), ("mlp.c_proj", block.mlp.proj)):
            w[p + name + ".weight"] = linear.weight.t()
            w[p + name + ".bias"] = torch.zeros(linear.out_features)
        w |= _norms(block, p + "ln_1", p + "ln_2")
    w |= _norm(model.ln_f, "transformer.ln_f")
    return config, w


def _rope_decoder(model: GPT, V: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Starcoder2 (gpt2 blocks) or Llama (llama blocks) with MHA/GQA/MQA + RoPE. latentlm's rotary is rotate-half,
    as both classes', so q and k rows keep their order."""
    attn, d = model.blocks[0].attn, model.wte.weight.size(1)
    config = {
        "hidden_size": d,
        "intermediate_size": model.blocks[0].mlp.fc.out_features,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": attn.n_head,
        "num_key_value_heads": attn.n_kv_heads,
        "max_position_embeddings": model.block_size,
        "rope_parameters": {"rope_type": "default", "rope_theta": _rope_theta(model)},
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
    }
    if model.block == "gpt2":
        config |= {
            "model_type": "starcoder2",
            "hidden_act": "gelu",  # erf GELU; Starcoder2's default gelu_pytorch_tanh is the tanh approximation
            "norm_epsilon": model.ln_f.eps,
            "use_bias": True,  # for the LayerNorms' biases; it also gives every linear layer a bias (zeros here)
            "sliding_window": None,
            "residual_dropout": 0.0,
            "embedding_dropout": 0.0,
        }
    else:
        config |= {
            "model_type": "llama",
            "head_dim": attn.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": model.ln_f.eps,
            "attention_bias": False,
            "mlp_bias": False,
        }
    w = {"model.embed_tokens.weight": model.wte.weight[:V]}
    kv_dim = attn.n_kv_heads * attn.head_dim
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.wqkv.weight.split([d, kv_dim, kv_dim])
        linears = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v,
                   "self_attn.o_proj": block.attn.wo.weight}
        if model.block == "gpt2":
            linears |= {"mlp.c_fc": block.mlp.fc.weight, "mlp.c_proj": block.mlp.proj.weight}
            w |= {p + name + ".bias": torch.zeros(weight.size(0)) for name, weight in linears.items()}
        else:
            linears |= {"mlp.gate_proj": block.mlp.gate.weight, "mlp.up_proj": block.mlp.fc.weight,
                        "mlp.down_proj": block.mlp.proj.weight}
        w |= {p + name + ".weight": weight for name, weight in linears.items()}
        w |= _norms(block, p + "input_layernorm", p + "post_attention_layernorm")
    w |= _norm(model.ln_f, "model.norm")
    return config, w


def _deepseek(model: GPT, V: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """MLA + decoupled RoPE as DeepSeek-V3 with dense MLPs. Both compute scores at 1/sqrt(d_nope + rope) and
    normalise only the latent, not the rotary key; latent_scale's gains fold into the norms' weights."""
    attn, d, L = model.blocks[0].attn, model.wte.weight.size(1), len(model.blocks)
    H, nope, rope, r = attn.n_head, attn.nope_dim, attn.rope_dim, attn.latent_dim
    ffn = model.blocks[0].mlp.fc.out_features
    config = {
        "model_type": "deepseek_v3",
        "hidden_size": d,
        "intermediate_size": ffn,
        "moe_intermediate_size": ffn,
        "num_hidden_layers": L,
        "num_attention_heads": H,
        "num_key_value_heads": H,  # K and V are rebuilt for every head; HF fails with any other value
        "q_lora_rank": None if attn.wq_b is None else attn.q_in_dim,
        "kv_lora_rank": r,
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": attn.head_dim,
        # No MoE: layer i is MoE iff i >= first_k_dense_replace. The expert counts are unused but must be ints.
        "first_k_dense_replace": L,
        "n_routed_experts": 1,
        "n_shared_experts": 1,
        "n_group": 1,
        "topk_group": 1,
        "num_experts_per_tok": 1,
        "routed_scaling_factor": 1.0,
        "num_nextn_predict_layers": 0,
        "hidden_act": "silu",
        "rms_norm_eps": model.ln_f.eps,
        "max_position_embeddings": model.block_size,
        "rope_parameters": {"rope_type": "default", "rope_theta": _rope_theta(model)},
        "rope_interleave": True,  # vLLM always interleaves, so the rows are permuted to match (below)
        "attention_bias": False,
        "attention_dropout": 0.0,
        # vLLM never ties DeepSeek's head and wants lm_head.weight in the file; save_pretrained drops it when tied.
        "tie_word_embeddings": False,
    }
    # latentlm rotates pairs (i, i + rope/2); interleaved RoPE pairs (2i, 2i + 1) at the same frequency.
    interleave = torch.arange(rope).view(2, rope // 2).t().reshape(-1)

    def permute_q(weight: Tensor) -> Tensor:  # (H * (nope + rope), in): the rope rows of each head
        w = weight.view(H, nope + rope, -1)
        return torch.cat((w[:, :nope], w[:, nope:][:, interleave]), dim=1).reshape(weight.shape)

    w = {"model.embed_tokens.weight": model.wte.weight[:V], "lm_head.weight": model.lm_head.weight[:V].clone()}
    for i, block in enumerate(model.blocks):
        p, a = f"model.layers.{i}.", block.attn
        q_in, latent, k_pe = a.wqkv_a.weight.split([a.q_in_dim, r, rope])
        if a.wq_b is None:
            w[p + "self_attn.q_proj.weight"] = permute_q(q_in)
        else:
            w[p + "self_attn.q_a_proj.weight"] = q_in
            w[p + "self_attn.q_a_layernorm.weight"] = a.q_norm.weight * a.q_gain
            w[p + "self_attn.q_b_proj.weight"] = permute_q(a.wq_b.weight)
        w[p + "self_attn.kv_a_proj_with_mqa.weight"] = torch.cat((latent, k_pe[interleave]))
        w[p + "self_attn.kv_a_layernorm.weight"] = a.kv_norm_weight[0] * a.kv_gain
        w[p + "self_attn.kv_b_proj.weight"] = a.wkv_b[0]  # (H * (nope + d_h), r): per head, W_uk rows then W_uv
        w[p + "self_attn.o_proj.weight"] = a.wo.weight
        w |= {p + "mlp.gate_proj.weight": block.mlp.gate.weight, p + "mlp.up_proj.weight": block.mlp.fc.weight,
              p + "mlp.down_proj.weight": block.mlp.proj.weight}
        w |= _norms(block, p + "input_layernorm", p + "post_attention_layernorm")
    w |= _norm(model.ln_f, "model.norm")
    return config, w


def _norm(norm: torch.nn.Module, name: str) -> dict[str, Tensor]:
    """A LayerNorm's weight and bias, or an RMSNorm's weight."""
    return {f"{name}.{k}": v for k, v in norm.state_dict().items()}


def _norms(block: torch.nn.Module, first: str, second: str) -> dict[str, Tensor]:
    return _norm(block.ln_1, first) | _norm(block.ln_2, second)


WEIGHTS = {
    "GPT2LMHeadModel": _gpt2,
    "Starcoder2ForCausalLM": _rope_decoder,
    "LlamaForCausalLM": _rope_decoder,
    "DeepseekV3ForCausalLM": _deepseek,
}


def hf_model(model: GPT, eot: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """config.json's contents and model.safetensors' tensors (float32, contiguous, each its own storage)."""
    arch = architecture(model)
    with torch.no_grad():
        config, weights = WEIGHTS[arch](model, model.vocab_size)
        weights = {k: v.detach().float().contiguous().clone() for k, v in weights.items()}
    config |= {
        "architectures": [arch],
        "vocab_size": model.vocab_size,  # the padding rows of the embedding are dropped: no id can sample them
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": "float32",
    }
    return config, weights


def hf_tokenizer(enc: tiktoken.Encoding) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` that encodes as `enc` does, with <|endoftext|> as a special token.

    tiktoken keeps only ranks; the merge that made a token is the pair BPE reaches when it encodes the token's
    bytes with the lower ranks alone. tiktoken looks a whole pre-token up before merging, hence ignore_merges.
    """
    # tiktoken has no public accessor for an Encoding's pattern and ranks; these attributes are what it is built from.
    if enc._pat_str != GPT2_PATTERN:
        raise ConfigError(f"tokenizer {enc.name} splits with a pattern other than GPT-2's; only GPT-2's is exported")
    ranks = enc._mergeable_ranks
    char = {b: c for c, b in unicode_to_byte().items()}

    def text(token: bytes) -> str:
        return "".join(char[b] for b in token)

    merges = [tuple(map(text, _last_merge(token, ranks))) for token in sorted(ranks, key=ranks.get) if len(token) > 1]
    tokenizer = Tokenizer(models.BPE({text(t): r for t, r in ranks.items()}, merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    if tokenizer.token_to_id(EOT) != enc.eot_token:
        raise ConfigError(f"{EOT} is id {enc.eot_token} in tokenizer {enc.name}, not the id after its ranks")
    return tokenizer


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make `token`: merge the lowest-ranked adjacent pair, below the token's rank."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        rank, i = min((ranks.get(a + b, len(ranks)), i) for i, (a, b) in enumerate(pairwise(parts)))
        if rank >= ranks[token]:
            raise ConfigError(f"token {token!r} is not made by merging lower-ranked tokens; the ranks are not a BPE")
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def export(model: GPT, enc: tiktoken.Encoding, out: str | Path) -> Path:
    """Write `model` and its tokenizer `enc` as a transformers folder at `out` (absent or empty): everything is
    built first, then written to a temporary folder beside `out` and renamed, so a failure leaves nothing behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out={out} exists and is not an empty folder; choose a new folder")
    if enc.n_vocab != model.vocab_size:
        raise ConfigError(f"the tokenizer has {enc.n_vocab} tokens but the model {model.vocab_size}")
    config, weights = hf_model(model, enc.eot_token)
    tokenizer = hf_tokenizer(enc)
    files = {
        "config.json": config,
        "generation_config.json": {"bos_token_id": enc.eot_token, "eos_token_id": enc.eot_token,
                                   "pad_token_id": enc.eot_token},
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
                                  "pad_token": EOT, "model_max_length": model.block_size},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save(str(tmp / "tokenizer.json"))
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        tmp.rename(out)  # replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        for key in ("ckpt", "out"):
            if OmegaConf.is_missing(cfg, key):
                raise ConfigError(f"{key} is not set; run python -m latentlm.export ckpt=<run>/checkpoints/best.ckpt "
                                  "out=<new folder>")
        model, enc = load_checkpoint(cfg.ckpt)
        out = export(model, enc, cfg.out)
    except ConfigError as err:
        fail(err)
    print(f"exported {architecture(model)} to {out}")


if __name__ == "__main__":
    _hydra_main()
