import pytest
import tiktoken

from latentlm.data.tokenizer import EOT, load_encoding, train_bpe

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
