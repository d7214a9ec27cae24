import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latentlm.data.stories import GRAMMAR, Story, generate_stories, story_logprob
from latentlm.judge import entity_issues, judge_file, judge_texts

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stories() -> list[Story]:
    return generate_stories(11, 0, 1000)


def first(stories: list[Story], needle: str) -> str:
    return next(s.text for s in stories if needle in s.text)


def test_generated_stories_pass_every_check(stories):
    result = judge_texts([s.text for s in stories])
    assert result["n"] == 1000
    assert result["valid_share"] == result["valid_prefix_share"] == result["consistent_share"] == 1.0
    assert set(result["rule_failures"].values()) == {0}
    assert 80 < result["mean_words"] < 300


def test_truncated_stories_are_valid_prefixes_and_still_consistent(stories):
    cut = [s.text[: len(s.text) * (i % 6 + 1) // 7] for i, s in enumerate(stories)]
    result = judge_texts(cut)
    assert result["valid_share"] == 0.0
    assert result["valid_prefix_share"] == 1.0
    assert result["consistent_share"] == 1.0


def test_each_rule_catches_its_corruption(stories):
    text = first(stories, ". She lived in")
    assert entity_issues(text.replace(". She lived in", ". He lived in")) == {"pronoun"}

    hero = re.search(r"named ([A-Z][a-z]+)", text).group(1)
    stranger = next(n for n in GRAMMAR.names_f.options if n not in text)
    assert entity_issues(text.replace(f"named {hero}", f"named {stranger}", 1)) == {"introduction"}

    text = first(stories, "I can't find")
    helper, hero = re.search(r'"([A-Z][a-z]+), I can\'t find my [^"]*" \w+ ([A-Z][a-z]+)\.', text).groups()
    assert entity_issues(text.replace(f'"{helper}, I can\'t', f'"{hero}, I can\'t')) == {"addressee"}
    stranger = next(n for n in GRAMMAR.names_m.options if n not in text)  # never introduced nor mentioned
    assert entity_issues(text.replace(f'"{helper}, I can\'t', f'"{stranger}, I can\'t')) == {"addressee",
                                                                                              "introduction"}

    text = first(stories, "the red ")
    head, _, tail = text.rpartition("the red ")
    assert entity_issues(f"{head}the pink {tail}") == {"colour"}

    text = first(stories, "all three ")
    assert entity_issues(text.replace("all three ", "all five ")) == {"count"}
    text = first(stories, " left. ")
    assert entity_issues(re.sub(r"had (only )?\w+ (\w+) left", r"had six \2 left", text)) == {"count"}


def test_corruptions_are_also_invalid(stories):
    she = first(stories, ". She lived in")
    bad = she.replace(". She lived in", ". He lived in")
    assert story_logprob(bad) is None
    result = judge_texts([she, bad, "Hello world.", she[:100]])
    assert result["valid_share"] == 0.25
    assert result["valid_prefix_share"] == 0.5
    assert result["consistent_share"] == 0.75  # only the pronoun swap is inconsistent
    assert result["rule_failures"]["pronoun"] == 1


def test_no_texts():
    assert judge_texts([])["n"] == 0


def run_cli(path: Path, *args: str) -> tuple[str, dict]:
    proc = subprocess.run([sys.executable, "-m", "latentlm.judge", str(path), *args], cwd=REPO,
                          capture_output=True, text=True, check=True)
    *table, last = proc.stdout.strip().splitlines()
    return "\n".join(table), json.loads(last)


def test_cli(tmp_path, stories):
    texts = [stories[0].text, stories[1].text, stories[2].text[:150], "Not a story at all."]
    path = tmp_path / "samples.txt"
    path.write_text("<|endoftext|>".join(texts) + "<|endoftext|>\n", encoding="utf-8")
    table, result = run_cli(path)
    assert "valid prefix" in table and "75.0%" in table
    assert result["n"] == 4
    assert result["valid_share"] == 0.5
    assert result["valid_prefix_share"] == 0.75
    assert result == judge_file(path)

    other = tmp_path / "other.txt"
    other.write_text("\n=====\n".join(texts[:2]), encoding="utf-8")
    assert run_cli(other, "--separator", "=====")[1]["valid_share"] == 1.0


def test_cli_on_a_checkpoint_samples_then_judges(smoke_run, tmp_path, capsys):
    from latentlm.judge import main

    ckpt = str(smoke_run / "checkpoints" / "last.ckpt")
    saved = tmp_path / "samples.txt"
    main([ckpt, "--samples", "3", "--max-new-tokens", "12", "--seed", "1", "--save", str(saved)])
    *table, last = capsys.readouterr().out.strip().splitlines()
    result = json.loads(last)
    assert result["n"] == 3 and "valid prefix" in "\n".join(table)
    assert result == judge_file(saved)  # the saved samples are what was judged
    main([ckpt, "--samples", "3", "--max-new-tokens", "12", "--seed", "1", "--save", str(tmp_path / "again.txt")])
    assert (tmp_path / "again.txt").read_text() == saved.read_text()  # seeded: the same samples

    main([ckpt, "--samples", "2", "--max-new-tokens", "5", "--prompt", "Once upon a time", "--temperature", "0",
          "--save", str(saved)])
    samples = [s for s in saved.read_text().split("<|endoftext|>\n") if s]
    assert len(samples) == 2 and samples[0] == samples[1] and samples[0].startswith("Once upon a time")


class _Recorder:
    """Stands in for the LightningModule: the net and what it logs."""

    def __init__(self, net):
        self.net, self.logged = net, {}

    def log(self, key, value):
        self.logged[key] = value


def test_judge_samples_callback_skips_sanity_check_and_tokenizer_less_data(smoke_run):
    from types import SimpleNamespace

    from latentlm.data.datamodule import RandomTokens
    from latentlm.generate import load_checkpoint
    from latentlm.judge import JudgeSamples

    net, enc = load_checkpoint(smoke_run / "checkpoints" / "last.ckpt")
    net.train()
    stories_dm = SimpleNamespace(cache=SimpleNamespace(encoding=lambda: enc))
    callback = JudgeSamples(num_samples=2, max_new_tokens=10)
    for trainer in (SimpleNamespace(sanity_checking=True, datamodule=stories_dm),
                    SimpleNamespace(sanity_checking=False, datamodule=RandomTokens(64, 8, 2))):
        module = _Recorder(net)
        callback.on_validation_epoch_end(trainer, module)
        assert module.logged == {}
    module = _Recorder(net)
    callback.on_validation_epoch_end(SimpleNamespace(sanity_checking=False, datamodule=stories_dm), module)
    assert set(module.logged) == {"val/judge_valid_prefix", "val/judge_consistent"}
    assert module.logged["val/judge_valid_prefix"] == judge_texts(callback.last_samples)["valid_prefix_share"]
    assert len(callback.last_samples) == 2 and net.training  # the net's mode is put back


def test_judge_samples_callback_in_a_training_run(data_root, tmp_path):
    from conftest import read_metrics, run_train, series

    run_dir = tmp_path / "run"
    run_train("experiment=smoke", "callbacks=with_judge", "trainer.max_steps=10", "trainer.val_check_interval=5",
              f"hydra.run.dir={run_dir}", root=data_root)
    rows = read_metrics(run_dir)
    valid, consistent = series(rows, "val/judge_valid_prefix"), series(rows, "val/judge_consistent")
    # Both validations, at steps 5 and 10 (the second is the final one; the sanity check logs nothing).
    assert [s for s, _ in valid] == [s for s, _ in consistent] == [s for s, _ in series(rows, "val/loss")]
    assert len(valid) == 2 and all(0 <= v <= 1 for _, v in valid + consistent)
