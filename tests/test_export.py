"""latentlm.export against transformers as the independent reference: for every supported (block, attention) pair the
exported folder loads with AutoModelForCausalLM and gives latentlm's logits and greedy tokens, and AutoTokenizer
encodes as latentlm's tiktoken encoding does. Skipped where transformers is not installed."""

import json
import math

import pytest
import torch
from conftest import run_main
from hydra.utils import instantiate
from test_attention import CTX, gpt_config
from test_equal_treatment import SCHEDULE

transformers = pytest.importorskip("transformers")

from latentlm import export as export_cli  # noqa: E402
from latentlm.config import ConfigError, compose_train  # noqa: E402
from latentlm.data.tokenizer import tokenizer_encoding, train_bpe  # noqa: E402
from latentlm.export import export, hf_model  # noqa: E402
from latentlm.generate import generate  # noqa: E402
from latentlm.lit import LitGPT  # noqa: E402
from latentlm.model import GPT  # noqa: E402

TEXTS = [
    "Once upon a time, a little girl named Lily found a shiny red ball in the park.",
    "Tom said: \"I can't go!\" and he ran home, 123 times faster than 45 cats.\n\nThe end.",
    "Café naïve déjà vu — 日本語 🙂 tabs\tand   spaces  ",
]

# (block, attention, extra attention options) -> the class it exports to
PAIRS = {
    ("gpt2", "mha", ()): "GPT2LMHeadModel",
    ("gpt2", "mha_rope", ()): "Starcoder2ForCausalLM",
    ("gpt2", "gqa", ()): "Starcoder2ForCausalLM",
    ("gpt2", "mqa", ()): "Starcoder2ForCausalLM",
    ("llama", "mha_rope", ()): "LlamaForCausalLM",
    ("llama", "gqa", ()): "LlamaForCausalLM",
    ("llama", "mqa", ()): "LlamaForCausalLM",
    ("llama", "mla_rope", ()): "DeepseekV3ForCausalLM",
    ("llama", "mla_rope", (("q_rank", 0.5),)): "DeepseekV3ForCausalLM",
    ("llama", "mla_rope", (("rope_in_head", True),)): "DeepseekV3ForCausalLM",
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> dict:
    """A 300-token BPE trained as latentlm trains one, as a checkpoint holds it."""
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.tiktoken"
    train_bpe(TEXTS * 20, 300, path)
    return {"kind": "bpe", "vocab_size": 300, "ranks": path.read_text()}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def random_gpt(block: str, name: str, vocab: int, **extra) -> GPT:
    """A float32 test GPT whose weights are all drawn at unit scale, so logits are sharp (greedy decoding has no
    near-ties) and every weight, norm gains and biases included, moves them."""
    torch.manual_seed(0)
    model = GPT(vocab, **gpt_config(name, block=block, **extra)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.split(".")[-2] in ("ln_1", "ln_2", "ln_f"):
                p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
            elif name == "wte.weight":
                p.normal_()
            else:
                p.copy_(torch.randn_like(p) / math.sqrt(p.size(-1)))
    return model


def hf_logits_error(model: GPT, hf_model) -> float:
    """max |logits difference| / max |latentlm logit| on random tokens over the whole context."""
    idx = torch.randint(0, model.vocab_size, (2, CTX), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(idx)[..., : model.vocab_size]
        actual = hf_model(idx).logits
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize(("block", "name", "extra"), list(PAIRS))
def test_export_matches_latentlm_logits_and_greedy_tokens(block, name, extra, tokenizer, tmp_path):
    enc = tokenizer_encoding(tokenizer)
    model = random_gpt(block, name, enc.n_vocab, **dict(extra))
    export(model, enc, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf_model).__name__ == PAIRS[block, name, extra]
    assert hf_logits_error(model, hf_model) <= 1e-4

    prompt = enc.encode_ordinary("Once upon a time, Lily")
    expected = generate(model, [prompt], 30, temperature=0, eot=enc.eot_token)[0]
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=30, do_sample=False)[0, len(prompt) :].tolist()
    actual = out[: out.index(enc.eot_token) + 1] if enc.eot_token in out else out  # HF pads after the end
    assert actual == expected


def test_deepseek_rope_rows_are_permuted_for_interleaved_rope(tokenizer, tmp_path):
    """The negative control of the MLA export: the same weights read with rotate-half RoPE (rope_interleave false,
    the convention latentlm computes in) are far off, so the parity above rests on the row permutation."""
    enc = tokenizer_encoding(tokenizer)
    model = random_gpt("llama", "mla_rope", enc.n_vocab)
    export(model, enc, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_interleave"] is True
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config | {"rope_interleave": False}))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf_logits_error(model, hf_model) > 1e-2


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_hf_tokenizer_encodes_as_tiktoken(kind, tokenizer, tmp_path):
    enc = tokenizer_encoding(tokenizer if kind == "bpe" else {"kind": "bytes"})
    export(random_gpt("gpt2", "mha", enc.n_vocab), enc, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in [*TEXTS, "unseen words: zebra quokka", ""]:
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == enc.encode_ordinary(text)
        assert hf.decode(ids) == text
    assert hf.encode("a<|endoftext|>b") == enc.encode("a<|endoftext|>b", allowed_special="all")
    assert hf.eos_token_id == enc.eot_token
    assert len(hf) == enc.n_vocab


@pytest.mark.parametrize(
    ("block", "name"),
    [("gpt2", "mla_rope"), ("llama", "mha"), ("gpt2", "mla"), ("llama", "mla"), ("llama", "mla_rope_split"),
     ("llama", "mlra"), ("llama", "mlra_gated"), ("llama", "gla2"), ("llama", "mlra2")],
)
def test_pairs_without_an_exact_class_are_refused(block, name, tokenizer, tmp_path):
    enc = tokenizer_encoding(tokenizer)
    with pytest.raises(ConfigError, match=f"^block={block} with attention {name} has no exact transformers class"):
        export(random_gpt(block, name, enc.n_vocab), enc, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def write_checkpoint(path, block: str, name: str, tokenizer: dict | None) -> GPT:
    """A checkpoint with the keys latentlm.train's (Lightning's) has: the module's state dict and hyperparameters."""
    module = LitGPT(gpt_config(name, block=block), 300, {}, SCHEDULE, tokenizer=tokenizer)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return module.net.eval()


def test_export_cli_writes_a_folder_that_loads(tokenizer, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = write_checkpoint(tmp_path / "model.ckpt", "llama", "gqa", tokenizer)
    code, out, err = run_main(capsys, export_cli._hydra_main, f"ckpt={tmp_path / 'model.ckpt'}", "out=hf")
    assert code == 0 and err == "" and out == "exported LlamaForCausalLM to hf\n"
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf_logits_error(model, hf_model) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model.ckpt"]  # no temporary folder left


def test_export_cli_bad_input_is_one_line(tokenizer, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_checkpoint(tmp_path / "good.ckpt", "gpt2", "mha", tokenizer)
    write_checkpoint(tmp_path / "random.ckpt", "gpt2", "mha", None)
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)  # a checkpoint with weights only, in a bare run dir
    old = tmp_path / "old" / "checkpoints" / "old.ckpt"
    torch.save({"state_dict": torch.load(tmp_path / "good.ckpt", weights_only=True)["state_dict"]}, old)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    cases = [
        ([f"ckpt={tmp_path / 'good.ckpt'}", "out=full"],
         "error: out=full exists and is not an empty folder; choose a new folder"),
        ([f"ckpt={tmp_path / 'random.ckpt'}", "out=new"],
         f"error: ckpt={tmp_path / 'random.ckpt'} has no tokenizer to write text with: its run trained on random "
         "tokens"),
        ([f"ckpt={old}", "out=new"],
         f"error: ckpt={old} holds no model config and tokenizer (it predates checkpoints that keep them), and its "
         f"run dir {tmp_path / 'old'} has no config.yaml and tokenizer.json either; load it from its run's "
         "checkpoints/"),
        (["ckpt=/nonexistent.ckpt", "out=new"],
         "error: ckpt=/nonexistent.ckpt is not a file; pass a .ckpt from a run's checkpoints/ folder"),
        (["out=new"],
         "error: ckpt is not set; run python -m latentlm.export ckpt=<run>/checkpoints/best.ckpt out=<new folder>"),
    ]
    for args, expected in cases:
        code, out, err = run_main(capsys, export_cli._hydra_main, *args)
        assert code == 2 and out == "" and err.strip().splitlines() == [expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "good.ckpt", "old", "random.ckpt"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


def test_vllm_mla_preset_has_the_dims_vllm_serves_with_its_mla_cache():
    """experiment=vllm_mla exports as DeepSeek-V3 with (qk_nope, qk_rope, v) = (64, 64, 128) and kv_lora_rank 256,
    a set vLLM's MLA prefill and decode backends accept (docs/export.md)."""
    cfg = compose_train(["experiment=vllm_mla"])
    config, _ = hf_model(instantiate(cfg.model, vocab_size=300, _convert_="all"), 299)
    assert config["architectures"] == ["DeepseekV3ForCausalLM"]
    dims = [config[k] for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "kv_lora_rank", "q_lora_rank")]
    assert dims == [64, 64, 128, 256, None]
