import pytest
import tiktoken
import tiktoken.load  # where get_encoding reads gpt2's files; latentlm itself does not import it

from latentlm.config import ConfigError
from latentlm.data.tokenizer import BPE, EOT, GPT2_URLS, load_encoding, tiktoken_cache_name, train_bpe

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
        BPE(vocab_size=257)
    train_bpe(CORPUS, vocab_size=258, path=tmp_path / "tok")
    assert load_encoding("bpe", tmp_path / "tok").n_vocab == 258


def test_bytes_tokenizer():
    enc = load_encoding("bytes")
    assert enc.n_vocab == 257 and enc.eot_token == 256
    assert enc.encode_ordinary(ODD) == list(ODD.encode())
    assert enc.decode(enc.encode_ordinary(ODD)) == ODD


def test_unknown_kind():
    with pytest.raises(ValueError, match="choose one of: bpe, gpt2, bytes"):
        load_encoding("sentencepiece")


@pytest.fixture
def offline_tiktoken(tmp_path, monkeypatch):
    """An empty TIKTOKEN_CACHE_DIR, no network (each download attempt is recorded), a fresh encoding registry."""
    downloads = []

    def no_network(url: str) -> bytes:
        downloads.append(url)
        raise OSError("offline")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return tmp_path, downloads


def test_gpt2_error_names_the_files_tiktoken_reads(offline_tiktoken, monkeypatch):
    """Without the files, the error says where to put them: each of GPT2_URLS under tiktoken_cache_name(url) in
    TIKTOKEN_CACHE_DIR. Files put there are what tiktoken then reads in place of the network."""
    cache_dir, downloads = offline_tiktoken
    with pytest.raises(ConfigError) as err:
        load_encoding("gpt2")
    assert f"TIKTOKEN_CACHE_DIR={cache_dir}" in str(err.value)
    for url in GPT2_URLS:
        assert f"{url} as {tiktoken_cache_name(url)}" in str(err.value)
    assert downloads == [GPT2_URLS[0]]  # it went for the first file, found in no cache
    # Stand-ins under the advertised names, with tiktoken's SHA-256 check off (they are not GPT-2's files):
    # tiktoken reads both from the cache and downloads nothing; they disagree with each other, so it still fails.
    monkeypatch.setattr(tiktoken.load, "check_hash", lambda data, expected_hash: True)
    downloads.clear()
    (cache_dir / tiktoken_cache_name(GPT2_URLS[0])).write_text("#version: 0.2\n")  # no merges
    (cache_dir / tiktoken_cache_name(GPT2_URLS[1])).write_text("{}")
    with pytest.raises(ConfigError, match="TIKTOKEN_CACHE_DIR"):
        load_encoding("gpt2")
    assert downloads == []
