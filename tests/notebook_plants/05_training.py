# Planted bug for notebooks/05_training.ipynb: AdamW forgets the first moment's bias correction, stepping with
# lr * m instead of lr * m / (1 - beta1^t), so its first steps are ten times too small. _update is a method of
# npgpt.optim.AdamW, looked up on the class at every step, so patching the class reaches every optimizer
# (npgpt.train's NumpyTwin included). The notebook's known-value first step and its step-by-step comparison with
# torch.optim.AdamW must fail.
import npgpt.optim as _optim

_correct_update = _optim.AdamW._update


def _update_without_bias_correction(self, p, g, m, v, decay_factor, step_size, inv_sqrt_bias_correction2):
    beta1 = self.betas[0]
    return _correct_update(self, p, g, m, v, decay_factor, step_size * (1.0 - beta1 ** self.t),
                           inv_sqrt_bias_correction2)


_optim.AdamW._update = _update_without_bias_correction
