"""Exercise 6 (optional): one merge step of byte-pair encoding (§3.2 step 1, the tokenizer).

Grade it with: python tutorials/assignments/grade.py ex6
"""


def merge_pair(ids, pair, new_id):
    """Replace each occurrence of the adjacent pair `pair` in `ids` by the single id `new_id`.

    ids: list of ints.   pair: tuple (a, b) of ints.   new_id: int, not in ids.
    Returns: a new list; `ids` itself is left unchanged. Scan from left to right, and once two
    ids are merged neither can be part of another merge: [7, 7, 7] with pair (7, 7) gives
    [new_id, 7].
    """
    raise NotImplementedError
