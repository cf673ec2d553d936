# Planted bug for notebooks/01_tokens.ipynb: BPE merges the LEFTMOST mergeable pair of a word instead of the pair
# with the lowest rank (a classic misreading of the algorithm). GPT2Tokenizer.bpe is patched on the class, so every
# tokenizer the notebook builds afterwards has it; " Gisburn" then becomes other pieces than tiktoken's, and the
# notebook's checks against tiktoken (and against the replayed merges) must fail.
import gptcore.tokenizer as _tokenizer


def _bpe_leftmost_pair_first(self, symbols):
    if self.whole_word_shortcut and symbols in self.encoder:
        return [symbols]
    parts = list(symbols)
    while len(parts) > 1:
        mergeable = [pair for pair in zip(parts, parts[1:]) if pair in self.merge_ranks]
        if not mergeable:
            break
        parts = _tokenizer.merge_pair(parts, mergeable[0])
    return parts


_tokenizer.GPT2Tokenizer.bpe = _bpe_leftmost_pair_first
