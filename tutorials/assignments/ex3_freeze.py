"""Exercise 3: freezing the pretrained language model (§3.2 step 1).

Grade it with: python tutorials/assignments/grade.py ex3
"""

import torch


def freeze(lm):
    """Make `lm` (any torch.nn.Module, here a minivlp.LanguageModel) frozen, in place.

    Frozen means: no parameter will ever get a gradient, any gradient already stored on a
    parameter (left from pretraining) is dropped (set to None), and the module and all its
    submodules are in evaluation mode. The weights themselves must not change, and a loss may
    still flow *through* the frozen LM into its inputs.
    Returns: the same module object.
    """
    raise NotImplementedError
