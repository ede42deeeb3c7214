"""Exercise 1: one merge step of byte-pair encoding, the tokenizer of the LM (§3.2 step 1).

Grade it with: python tutorials/assignments/grade.py --exercise 1
"""


def merge_pair(ids, pair, new_id):
    """Replace each occurrence of the adjacent pair `pair` in `ids` by the single id `new_id`.

    ids: a list of ints.   pair: a tuple (a, b) of ints.   new_id: an int that is not in ids.
    Returns: a new list; `ids` itself is left unchanged. Scan from left to right; once two ids
    are merged, neither can be part of another merge.

    Worked example, with new_id 300:
        merge_pair([5, 6, 6, 5, 6], (5, 6), 300)  ->  [300, 6, 300]
        merge_pair([7, 7, 7], (7, 7), 300)        ->  [300, 7]     (not [7, 300])
        merge_pair([7, 7, 7, 7], (7, 7), 300)     ->  [300, 300]
        merge_pair([], (7, 7), 300)               ->  []
    """
    raise NotImplementedError
