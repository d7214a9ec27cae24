"""Generation: cached decoding reproduces the full forward's choices; checkpoints rebuild their model."""

import itertools
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, read_metrics, run_main, series
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_attention import VARIANTS, make_gpt

import latentlm.generate as generate_cli
from latentlm.data.tokenizer import tokenizer_encoding
from latentlm.generate import generate, load_checkpoint, sample_next
from latentlm.lit import LitGPT


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_generation_equals_argmax_of_full_forward(name):
    model = make_gpt(name, dtype=torch.float32)
    prompts = [[5, 17, 3, 9, 22], [7, 1, 4]]  # different lengths share one cache
    outs = generate(model, prompts, max_new_tokens=12, temperature=0)
    for prompt, out in zip(prompts, outs, strict=True):
        seq = list(prompt)
        for _ in range(12):
            logits = model(torch.tensor([seq]))[0, -1, : model.vocab_size]
            seq.append(int(logits.argmax()))
        assert out == seq[len(prompt) :]


def test_sampling_is_seeded_and_respects_top_k():
    model = make_gpt("mla_rope", dtype=torch.float32)
    a = generate(model, [[1, 2, 3]], 20, temperature=1.0, top_k=5, seed=3)
    assert a == generate(model, [[1, 2, 3]], 20, temperature=1.0, top_k=5, seed=3)
    assert a != generate(model, [[1, 2, 3]], 20, temperature=1.0, top_k=5, seed=4)


def test_top_k_and_top_p_filter():
    logits = torch.tensor([[4.0, 3.0, 2.0, -10.0]])
    draws = {int(sample_next(logits, 1.0, 2, None, torch.Generator().manual_seed(s))) for s in range(200)}
    assert draws == {0, 1}
    # softmax([4, 3, 2]) ~ [0.665, 0.245, 0.090]: top_p = 0.5 keeps only the first token.
    draws = {int(sample_next(logits, 1.0, None, 0.5, torch.Generator().manual_seed(s))) for s in range(200)}
    assert draws == {0}


def test_stops_at_eot():
    model = make_gpt("mha", dtype=torch.float32)
    first = generate(model, [[1, 2]], 10, temperature=0)[0]
    eot = first[3]
    out = generate(model, [[1, 2]], 10, temperature=0, eot=eot)[0]
    assert out == first[: first.index(eot) + 1]


def test_prompt_longer_than_context_is_refused():
    model = make_gpt("mha", dtype=torch.float32)
    with pytest.raises(ValueError, match="does not fit the context block_size=48"):
        generate(model, [list(range(60))], 5)


def test_checkpoint_rebuilds_the_trained_model(smoke_run):
    """The rebuilt model scores the run's validation batches as the run's last validation did (same weights,
    same tokenizer), with the loss recomputed here."""
    model, enc = load_checkpoint(smoke_run / "checkpoints" / "last.ckpt")
    assert model.attention_name == "mla_rope" and model.vocab_size == enc.n_vocab
    cfg = OmegaConf.load(smoke_run / "config.yaml")
    data = instantiate(cfg.data, _convert_="all")
    data.setup()
    losses = []
    for x, y in itertools.islice(data.val_dataloader(), cfg.trainer.limit_val_batches):
        logits = model(x)[..., : model.vocab_size]
        losses.append(F.cross_entropy(logits.flatten(0, 1), y.flatten()))
    logged = [v for _, v in series(read_metrics(smoke_run), "val/loss")][-1]  # the final validation, at last.ckpt
    assert torch.stack(losses).mean().item() == pytest.approx(logged, rel=1e-5)


def generate_cli_output(ckpt, prompt: str, cwd) -> str:
    """stdout of `python -m latentlm.generate` (greedy, 10 tokens) run from `cwd` with this checkout's latentlm."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "latentlm.generate", f"ckpt={ckpt}", f"prompt={prompt}", "max_new_tokens=10",
         "temperature=0"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_checkpoint_copied_anywhere_rebuilds_its_model_eagerly(compiled_run, tmp_path):
    """Trained with torch.compile, copied alone into another folder: Lightning rebuilds the module in this eager
    process, with the plain model's parameter names, and generate writes from the copy what it writes from the
    original, the same greedy tokens as the rebuilt model gives here."""
    assert OmegaConf.load(compiled_run / "config.yaml").compile is True
    original = compiled_run / "checkpoints" / "best.ckpt"
    copy = tmp_path / "elsewhere" / "model.ckpt"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    module = LitGPT.load_from_checkpoint(copy)
    trained = torch.load(original, map_location="cpu", weights_only=True)["state_dict"]
    assert "compile_mode" not in module.hparams
    assert set(module.state_dict()) == set(trained) and all(name.startswith("net.") for name in trained)
    for name, value in trained.items():
        assert torch.equal(module.state_dict()[name], value), name

    prompt = "Once upon a time"
    enc = tokenizer_encoding(module.hparams.tokenizer)
    tokens = generate(module.net.eval(), [enc.encode_ordinary(prompt)], 10, temperature=0, eot=enc.eot_token)[0]
    expected = prompt + enc.decode([t for t in tokens if t != enc.eot_token]) + "\n<|endoftext|>\n"
    assert generate_cli_output(copy, prompt, cwd=copy.parent) == expected
    assert generate_cli_output(original, prompt, cwd=tmp_path) == expected


def test_an_older_checkpoint_loads_from_its_run_dir_or_says_what_is_missing(smoke_run, tmp_path, monkeypatch, capsys):
    """A checkpoint without the saved config and tokenizer (as written before LitGPT kept them)."""
    checkpoint = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del checkpoint["hyper_parameters"], checkpoint["hparams_name"]
    old_run = tmp_path / "run"
    (old_run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "tokenizer.json", "tokenizer.tiktoken"):
        shutil.copyfile(smoke_run / name, old_run / name)
    torch.save(checkpoint, old_run / "checkpoints" / "last.ckpt")
    model, enc = load_checkpoint(old_run / "checkpoints" / "last.ckpt")
    expected, expected_enc = load_checkpoint(smoke_run / "checkpoints" / "last.ckpt")
    assert model.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())
    text = "Once upon a time, Lily found a ball."
    assert enc.n_vocab == expected_enc.n_vocab and enc.encode_ordinary(text) == expected_enc.encode_ordinary(text)

    alone = tmp_path / "alone" / "last.ckpt"
    alone.parent.mkdir()
    torch.save(checkpoint, alone)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, generate_cli._hydra_main, f"ckpt={alone}")
    assert code == 2 and out == "" and err.strip().splitlines() == [
        f"error: ckpt={alone} holds no model config and tokenizer (it predates checkpoints that keep them), and its "
        f"run dir {tmp_path.resolve()} has no config.yaml and tokenizer.json either; load it from its run's "
        "checkpoints/"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ckpt=/nonexistent/best.ckpt"],
         "error: ckpt=/nonexistent/best.ckpt is not a file; pass a .ckpt from a run's checkpoints/ folder"),
        ([], "error: ckpt is not set; pass ckpt=<run dir>/checkpoints/best.ckpt of a latentlm.train run"),
    ],
)
def test_generate_cli_bad_ckpt_is_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # generate writes its job log into the working directory
    code, out, err = run_main(capsys, generate_cli._hydra_main, *args)
    assert code == 2 and out == "" and err.strip().splitlines() == [expected]


def test_empty_prompt_starts_from_endoftext(smoke_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = smoke_run / "checkpoints" / "best.ckpt"
    code, out, err = run_main(capsys, generate_cli._hydra_main, f"ckpt={ckpt}", "prompt=''", "max_new_tokens=12",
                              "temperature=0", "device=cpu")
    model, enc = load_checkpoint(ckpt)
    sample = generate(model, [[enc.eot_token]], 12, temperature=0, eot=enc.eot_token)[0]
    assert code == 0 and err == ""
    assert out == enc.decode([t for t in sample if t != enc.eot_token]) + "\n<|endoftext|>\n"


def test_generate_cli(smoke_run, tmp_path, monkeypatch, capsys):
    """One real process as a user types it; the same command again and two bad inputs in this process."""
    args = [f"ckpt={smoke_run / 'checkpoints' / 'best.ckpt'}", "prompt=Once upon a time", "max_new_tokens=10",
            "temperature=0"]
    first = subprocess.run([sys.executable, "-m", "latentlm.generate", *args], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Once upon a time")
    monkeypatch.chdir(tmp_path)  # generate writes its job log into the working directory
    code, out, _ = run_main(capsys, generate_cli._hydra_main, *args)
    assert code == 0 and out == first.stdout  # greedy is deterministic
    code, _, err = run_main(capsys, generate_cli._hydra_main, *args[:-3], "prompt=" + "Once upon a time " * 40)
    assert code == 2 and "does not fit the context block_size=32" in err
    code, _, err = run_main(capsys, generate_cli._hydra_main, *args, "dtype=int8")
    assert code == 2 and "dtype=int8 is not one of auto, float32" in err


@pytest.mark.gpu  # the compiled decode step is for GPUs
@pytest.mark.parametrize("name", ["mha", "mla_rope", "mlra"])
def test_compiled_decode_step_generates_what_eager_does(name):
    model = make_gpt(name, dtype=torch.float32).cuda()
    prompts = [[5, 17, 3, 9, 22], [7, 1, 4]]
    eager = generate(model, prompts, max_new_tokens=20, temperature=0)
    assert generate(model, prompts, max_new_tokens=20, temperature=0, compile_step=True) == eager
