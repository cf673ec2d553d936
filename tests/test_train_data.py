"""Training data: the resumable window order (WindowStream) and the tokenized corpus cache (gptcore.corpus)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import gptcore.corpus as corpus_module
from gptcore.corpus import load_corpus, prepare_corpus, resolve_sources, split_point
from gptcore.data import SlidingWindowDataset, WindowStream, iterate_batches
from gptcore.tokenizer import get_tokenizer


# ----- WindowStream ------------------------------------------------------------------------------------

def test_stream_with_one_batch_per_step_is_iterate_batches_epoch_after_epoch():
    dataset = SlidingWindowDataset(np.arange(300), max_length=4, stride=4)     # 74 windows
    stream = WindowStream(len(dataset), 8, seed=5)
    expected = [b for epoch in range(3) for b in iterate_batches(dataset, 8, seed=5, epoch=epoch)]
    for X_expected, _ in expected:                      # 9 batches per epoch, the last 2 windows dropped
        X, _ = dataset.batch(stream.next_step())
        np.testing.assert_array_equal(X, X_expected)
    assert stream.epoch == 2


def test_shards_split_the_global_batch_and_their_union_is_it():
    indices = np.arange(100, 112)           # one step: 2 micro-steps x 3 processes x 2 windows
    shards = [WindowStream.shard(indices, micro, rank, 3, 2) for micro in range(2) for rank in range(3)]
    np.testing.assert_array_equal(np.concatenate(shards), indices)
    np.testing.assert_array_equal(WindowStream.shard(indices, 1, 0, 3, 2), [106, 107])


def test_stream_resumes_mid_epoch_and_refuses_other_data():
    stream = WindowStream(50, 6, seed=1)
    for _ in range(5):
        stream.next_step()
    state = stream.state_dict()
    continued = [stream.next_step() for _ in range(7)]              # crosses into epoch 1
    resumed = WindowStream(50, 6, seed=999)
    resumed.load_state_dict(state)
    for a, b in zip(continued, (resumed.next_step() for _ in range(7))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="covers 50 windows, this data has 49"):
        WindowStream(49, 6, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than one global batch of 60"):
        WindowStream(50, 60, seed=1)


def test_dataset_over_uint16_memmap_gives_the_int64_windows(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50257, 500).astype(np.uint16)
    ids.tofile(tmp_path / "t.bin")
    mapped = SlidingWindowDataset(np.memmap(tmp_path / "t.bin", dtype=np.uint16, mode="r"), 16, 5, copy=False)
    in_memory = SlidingWindowDataset(ids.astype(np.int64), 16, 5)
    X, Y = mapped.batch(np.array([3, 0, 90]))
    assert X.dtype == np.int64 and Y.dtype == np.int64
    np.testing.assert_array_equal(X, in_memory.batch(np.array([3, 0, 90]))[0])
    np.testing.assert_array_equal(mapped[7][1], in_memory[7][1])


# ----- the token corpus ----------------------------------------------------------------------------------

@pytest.fixture
def text_folder(tmp_path, shared_data_dir):
    verdict = (shared_data_dir / "the-verdict.txt").read_text(encoding="utf-8")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(verdict[:6000], encoding="utf-8")
    (folder / "b.txt").write_text("Über naïve café\n\n  indented line\n" + verdict[6000:9000], encoding="utf-8")
    (folder / ".hidden").write_text("never read", encoding="utf-8")
    return folder


def test_corpus_is_the_tokenized_text_split_per_file_and_chunking_changes_nothing(tmp_path, text_folder, monkeypatch):
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 97)        # many chunks per file
    files = resolve_sources([str(text_folder)])
    assert [f.name for f in files] == ["a.txt", "b.txt"]
    corpus = prepare_corpus(files, cache_dir=tmp_path / "cache", val_fraction=0.2, progress=False)
    tokenizer = get_tokenizer("tiktoken")
    train, val = [], []
    for number, path in enumerate(files):
        data = path.read_bytes()
        cut = split_point(path, 0.2)
        assert data[cut - 1:cut] == b"\n"                          # the split is at a line start
        assert 0 <= cut - 0.8 * len(data) < 1000                  # moved forward to the next line start
        if number:
            train.append(tokenizer.eot_id)
            val.append(tokenizer.eot_id)
        train += tokenizer.encode(data[:cut].decode())
        val += tokenizer.encode(data[cut:].decode())
    train_tokens, val_tokens = corpus.train_tokens(), corpus.val_tokens()
    assert isinstance(train_tokens, np.memmap) and train_tokens.dtype == np.uint16
    assert train_tokens.tolist() == train and val_tokens.tolist() == val
    assert corpus.meta["train_tokens"] == len(train)


def test_corpus_is_reused_and_rebuilt_when_an_input_changes(tmp_path, text_folder, monkeypatch):
    files = resolve_sources([str(text_folder / "a.txt")])
    first = prepare_corpus(files, cache_dir=tmp_path / "cache", progress=False)

    def must_not_tokenize(*args, **kwargs):
        raise AssertionError("the corpus was tokenized again")
    with monkeypatch.context() as patch:
        patch.setattr(corpus_module, "_tokenize_into", must_not_tokenize)
        again = prepare_corpus(files, cache_dir=tmp_path / "cache", progress=False)
        assert again.folder == first.folder and again.meta["key"] == first.meta["key"]
    (text_folder / "a.txt").write_text("changed text\n" * 50, encoding="utf-8")
    changed = prepare_corpus(files, cache_dir=tmp_path / "cache", progress=False)
    assert changed.folder != first.folder
    other_split = prepare_corpus(files, cache_dir=tmp_path / "cache", val_fraction=0.3, progress=False)
    assert other_split.folder != changed.folder
    (changed.folder / "meta.json").unlink()                      # an interrupted preparation is redone
    assert load_corpus(changed.folder) is None
    assert prepare_corpus(files, cache_dir=tmp_path / "cache", progress=False).folder == changed.folder


def test_corpus_reuse_hashes_only_files_whose_size_or_mtime_changed(tmp_path, text_folder, monkeypatch):
    path = text_folder / "a.txt"
    an_hour_ago = time.time_ns() - 3600 * 10**9

    def edit(text, mtime_ns):                                   # explicit mtimes: clocks may be coarse
        path.write_text(text, encoding="utf-8")
        os.utime(path, ns=(mtime_ns, mtime_ns))
    text = path.read_text(encoding="utf-8")
    edit(text, an_hour_ago)
    cache = tmp_path / "cache"
    first = prepare_corpus([path], cache_dir=cache, progress=False)
    hashed = []

    def prepare(may_tokenize):
        def forbidden(*args, **kwargs):
            raise AssertionError("the corpus was tokenized again")
        with monkeypatch.context() as patch:
            patch.setattr(corpus_module, "_sha256_file", lambda f: hashed.append(f) or real_hash(f))
            if not may_tokenize:
                patch.setattr(corpus_module, "_tokenize_into", forbidden)
            return prepare_corpus([path], cache_dir=cache, progress=False)
    real_hash = corpus_module._sha256_file

    assert prepare(may_tokenize=False).folder == first.folder and hashed == []      # same size and mtime
    edit(text, an_hour_ago + 10**9)                             # touched: hashed once, same folder ...
    assert prepare(may_tokenize=False).folder == first.folder and len(hashed) == 1
    assert prepare(may_tokenize=False).folder == first.folder and len(hashed) == 1  # ... which now vouches
    same_size = text.replace("a", "o", 1)
    edit(same_size, an_hour_ago + 2 * 10**9)                    # edited, same size: tokenized again
    changed = prepare(may_tokenize=True)
    assert changed.folder != first.folder and len(hashed) == 2
    cut = split_point(path, 0.1)
    assert changed.train_tokens().tolist() == get_tokenizer().encode(same_size.encode()[:cut].decode())


def test_corpus_reuse_hashes_files_changed_when_their_stats_were_recorded(tmp_path, text_folder):
    """A second edit as quick as a coarse mtime clock's tick keeps size and mtime: a file changed within
    STATS_SETTLE_NS of the recorded stats is hashed, never trusted."""
    path = text_folder / "a.txt"
    text = path.read_text(encoding="utf-8")
    first = prepare_corpus([path], cache_dir=tmp_path / "cache", progress=False)     # a.txt was just written
    mtime = path.stat().st_mtime_ns
    path.write_text(text.replace("a", "o", 1), encoding="utf-8")
    os.utime(path, ns=(mtime, mtime))
    assert prepare_corpus([path], cache_dir=tmp_path / "cache", progress=False).folder != first.folder


def test_corpus_errors_name_the_problem(tmp_path, shared_data_dir, monkeypatch):
    monkeypatch.setenv("GPT2_DATA_DIR", str(shared_data_dir))
    assert resolve_sources(None)[0].name == "the-verdict.txt"
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a data set name"):
        resolve_sources(["no-such-thing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no files"):
        resolve_sources([str(tmp_path / "empty")])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9\n".encode("latin-1") * 3)
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        prepare_corpus([bad], cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match="validation fraction"):
        prepare_corpus([bad], cache_dir=tmp_path / "cache", val_fraction=1.0, progress=False)


def test_chunked_encoding_equals_whole_text_on_whitespace_heavy_text(tmp_path, monkeypatch):
    """Random texts of words, punctuation and whitespace runs (spaces, tabs, newlines, NBSP, CJK): the cut
    rule must keep every token; cutting after a newline instead breaks "\\n\\n" and fails this test."""
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 7)
    tokenizer = get_tokenizer("tiktoken")
    rng = np.random.default_rng(0)
    pieces = ["word", "Word", "x", "42", "'s", ".", '"', "--", "é", "日本", " ", "  ", "\t", "\n", "\n\n",
              " \n", "\n ", "\u00a0", "\u3000", "\r\n"]
    path = tmp_path / "t.txt"
    for _ in range(100):
        text = "".join(rng.choice(pieces, size=60))
        path.write_text(text, encoding="utf-8", newline="")
        chunks = list(corpus_module._text_chunks(path, 0, path.stat().st_size))
        assert "".join(c for c, _ in chunks) == text
        ids = [i for chunk, _ in chunks for i in tokenizer.encode(chunk)]
        assert ids == tokenizer.encode(text)
