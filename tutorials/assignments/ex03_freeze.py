"""Exercise 3: freezing the pretrained language model (§3.2 step 1).

Grade it with: python tutorials/assignments/grade.py --exercise 3
"""

import torch


def freeze(lm):
    """Make `lm` (any torch.nn.Module, here a minivlp.LanguageModel) frozen, in place.

    Frozen means three things, and the grader checks each:
      - no parameter requires a gradient (requires_grad is False on every one);
      - no parameter keeps a gradient left from pretraining (.grad is None, not zeros);
      - the module and every submodule are in evaluation mode (.training is False).
    The weights themselves must not change, and a loss must still be able to flow *through*
    the frozen LM into its inputs (a visual prefix is trained that way): do not switch autograd
    off. Returns: the same module object.

    Worked example: after freeze(lm), lm(ids, prefix=p).sum().backward() with a prefix p that
    requires grad fills p.grad and leaves every lm parameter's .grad at None.
    """
    raise NotImplementedError
