import inspect

import pytest
import tiktoken
from tiktoken_ext import openai_public

from latentlm.config import ConfigError
from latentlm.data.tokenizer import EOT, GPT2_URLS, load_encoding, tiktoken_cache_name, train_bpe

CORPUS = [
    "Once upon a time, a little girl named Lily found a red ball.",
    'Tom said, "Can I play too?" Lily smiled and gave him the ball.',
    "They played in the park until the sun went down. The end.",
] * 50
ODD = 'Naïve café, emoji 🙂, tabs\tand  double  spaces, numbers 12345, CJK 漢字 and "quotes".\n'


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.tiktoken"
    hf = train_bpe(CORPUS, vocab_size=400, path=path)
    return hf, load_encoding("bpe", path)


def test_bpe_is_a_tiktoken_encoding_with_eot_last(trained):
    _, enc = trained
    assert isinstance(enc, tiktoken.Encoding)
    # The trainer stops early when no pair is left to merge, as on this small corpus: EOT follows the last merge.
    assert 256 < enc.eot_token == enc.n_vocab - 1 <= 399
    assert enc.encode(EOT, allowed_special="all") == [enc.eot_token]


@pytest.mark.parametrize("text", [*CORPUS[:3], ODD, ""])
def test_bpe_round_trip_and_same_tokens_as_the_trainer(trained, text):
    hf, enc = trained
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    # The saved ranks reproduce the HF tokenizer's merges exactly: same number of tokens, same byte pieces.
    hf_ids = hf.encode(text).ids
    assert len(ids) == len(hf_ids)
    assert [enc.decode_single_token_bytes(i) for i in ids] == [enc.decode_single_token_bytes(i) for i in hf_ids]


def test_bpe_compresses_its_corpus(trained):
    _, enc = trained
    text = CORPUS[0]
    assert len(enc.encode_ordinary(text)) < len(text.encode()) / 2


def test_bpe_vocab_size_minimum_is_bytes_one_merge_and_eot(tmp_path):
    with pytest.raises(ConfigError, match=r"^tokenizer.vocab_size=257 is too small for a byte-level BPE: the minimum"):
        train_bpe(CORPUS, vocab_size=257, path=tmp_path / "tok")
    train_bpe(CORPUS, vocab_size=258, path=tmp_path / "tok")
    assert load_encoding("bpe", tmp_path / "tok").n_vocab == 258


def test_bytes_tokenizer():
    enc = load_encoding("bytes")
    assert enc.n_vocab == 257 and enc.eot_token == 256
    assert enc.encode_ordinary(ODD) == list(ODD.encode())
    assert enc.decode(enc.encode_ordinary(ODD)) == ODD


def test_gpt2_without_files_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache, and no network here
    monkeypatch.setattr(tiktoken.load, "read_file", lambda path: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(RuntimeError, match="TIKTOKEN_CACHE_DIR"):
        load_encoding("gpt2")


def test_unknown_kind():
    with pytest.raises(ValueError, match="choose one of: bpe, gpt2, bytes"):
        load_encoding("sentencepiece")


GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def _data_gym_chars() -> tuple[dict[int, str], list[int]]:
    """GPT-2's byte -> character map of vocab.bpe / encoder.json as tiktoken.load reads it, and the bytes' ranks."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}, printable + extra


def write_fake_gpt2_cache(cache_dir) -> None:
    """A stand-in for GPT-2's vocab.bpe and encoder.json in tiktoken's cache format (each file under sha1(url)).

    Same shape as the real files (256 bytes + 50,000 merges + <|endoftext|> = 50,257 tokens), but its merges are
    simply byte pairs: the real files cannot be downloaded here.
    """
    import hashlib
    import json

    chars, byte_order = _data_gym_chars()
    firsts = [*b" etaoinsrhldcumfpgwybvkxjqz", *(b for b in range(256) if b not in b" etaoinsrhldcumfpgwybvkxjqz")]
    merges = [(a, b) for a in firsts for b in range(256)][:50_000]  # every pair after a space or letter comes early
    encoder = {chars[b]: i for i, b in enumerate(byte_order)}
    encoder.update({chars[a] + chars[b]: 256 + i for i, (a, b) in enumerate(merges)})
    encoder[EOT] = 50256
    vocab_bpe = "#version: 0.2\n" + "".join(f"{chars[a]} {chars[b]}\n" for a, b in merges)
    for name, contents in (("vocab.bpe", vocab_bpe), ("encoder.json", json.dumps(encoder))):
        key = hashlib.sha1((GPT2_URL + name).encode()).hexdigest()
        (cache_dir / key).write_text(contents, encoding="utf-8")
        assert key == tiktoken_cache_name(GPT2_URL + name)  # the names the error message tells users


@pytest.fixture
def offline_tiktoken(tmp_path, monkeypatch):
    """An empty TIKTOKEN_CACHE_DIR, no network, and a fresh registry (so no gpt2 leaks between tests)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", lambda path: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return tmp_path


def test_gpt2_works_from_tiktoken_cache_dir(offline_tiktoken, monkeypatch):
    write_fake_gpt2_cache(offline_tiktoken)
    # tiktoken checks each cached file's SHA-256 against the real file's, which a stand-in cannot match:
    # only that check is switched off here; the file names, formats and loading are tiktoken's own.
    monkeypatch.setattr(tiktoken.load, "check_hash", lambda data, expected_hash: True)
    assert all(url in inspect.getsource(openai_public.gpt2) for url in GPT2_URLS)
    enc = load_encoding("gpt2")
    assert enc.name == "gpt2" and enc.n_vocab == 50257 and enc.eot_token == 50256
    ids = enc.encode_ordinary(ODD)
    assert enc.decode(ids) == ODD and len(ids) < len(ODD.encode())  # byte pairs merged
    assert enc.encode_ordinary(" e") == [256 + ord("e")]  # the merges of a space come first in the stand-in


def test_gpt2_cache_with_wrong_hash_is_refused_clearly(offline_tiktoken):
    write_fake_gpt2_cache(offline_tiktoken)
    with pytest.raises(RuntimeError, match="TIKTOKEN_CACHE_DIR"):
        load_encoding("gpt2")  # the real hash check: the stand-in is not GPT-2's file
    assert len(list(offline_tiktoken.iterdir())) < 2  # tiktoken deleted the file that failed its check
