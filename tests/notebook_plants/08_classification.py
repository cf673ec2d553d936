# Planted bug for notebooks/08_classification.ipynb: the classifier reads every message at the batch's last
# position (-1) instead of its last real token (the book readers' bug: a padded message is read at padding).
# The notebook must fail: it compares each message's picked state with the same message run alone, unpadded.
# classifier_head_forward calls last_token_forward through npgpt.classifier's globals, and the notebook imports
# it after this cell, so patching the module attribute is enough.
import npgpt.classifier

_last_token_without_the_bug = npgpt.classifier.last_token_forward


def last_token_at_the_end(x, lengths):
    full = x.shape[1] * (lengths * 0 + 1)            # every row read at position T - 1
    return _last_token_without_the_bug(x, full)


npgpt.classifier.last_token_forward = last_token_at_the_end
