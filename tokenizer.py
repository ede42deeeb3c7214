"""Byte-level BPE tokenizer, written from scratch with the standard library only.

Text is first turned into UTF-8 bytes, so the 256 byte values are the starting tokens and any
string at all can be encoded. Training then repeats one step: find the most frequent pair of
adjacent tokens and give it a new id (256, 257, ...). Encoding replays those merges in the order
they were learned. Three special tokens (<bos>, <eos>, <pad>) take the last three ids.

Worked example, training on "aaab aab ab" with vocab_size=262 (256 bytes + 3 merges + 3 specials):
    chunks      "aaab", " aab", " ab"            ("a" = 97, "b" = 98, " " = 32)
    merge 1     (97, 97)  -> 256   "aa"   (seen 3 times; ties with (97, 98), smaller pair wins)
    merge 2     (97, 98)  -> 257   "ab"
    merge 3     (32, 256) -> 258   " aa"
    encode("aaab aab ab") == [256, 257, 258, 98, 32, 257]   (11 bytes -> 6 tokens)
tests/test_tokenizer.py works through every step of this example.
"""

import heapq
import json
import os
import re
from collections import Counter, defaultdict

# Text is cut into chunks before BPE, and merges never cross a chunk boundary, so a token never
# glues the end of one word to the start of the next. Every character falls into exactly one of
# these branches, so joining the chunks always gives back the text.
SPLIT_PATTERN = re.compile(
    r"""
      [ ]?[^\W\d_]+         # a word (letters of any script), with an optional leading space
    | [ ]?\d+               # a run of digits
    | [ ]?(?:[^\s\w]|_)+    # a run of punctuation, symbols, emoji, combining marks
    | \s+(?!\S)             # whitespace, leaving its last space to the word that follows
    | \s+                   # whitespace at the end of the text or before a non-space
    """,
    re.VERBOSE,
)

SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>")
NUM_BYTES = 256
# Bump the version whenever SPLIT_PATTERN or the meaning of the saved data changes.
FORMAT = "minivlp-byte-bpe/1"


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids`, scanning left to right: [1, 1, 1] -> [X, 1]."""
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


class Tokenizer:
    """A list of merges; merge i turns a pair of ids into the new id 256 + i.

    Special ids come after the merged ones: bos_id, eos_id, pad_id are the last three ids.
    encode() never produces them; decode() renders them as their names ("<bos>", ...) so that
    they stay visible when debugging.
    """

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [tuple(pair) for pair in merges]
        # A pair's new id doubles as its rank: lower ids were learned earlier and apply first.
        self.merge_ids = {pair: NUM_BYTES + i for i, pair in enumerate(self.merges)}
        self.token_bytes = {i: bytes([i]) for i in range(NUM_BYTES)}
        for (left, right), new_id in self.merge_ids.items():
            self.token_bytes[new_id] = self.token_bytes[left] + self.token_bytes[right]
        first_special = NUM_BYTES + len(self.merges)
        self.bos_id, self.eos_id, self.pad_id = range(first_special, first_special + 3)
        for offset, name in enumerate(SPECIAL_TOKENS):
            self.token_bytes[first_special + offset] = name.encode("utf-8")
        self._chunk_cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + 3 special tokens."""
        return len(self.token_bytes)

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, text: str, vocab_size: int, allow_fewer: bool = False) -> "Tokenizer":
        """Learn vocab_size - 259 merges from `text` (with allow_fewer, fewer if the text runs
        out of pairs to merge: a small corpus then gets the vocabulary it can fill).

        Pairs are counted over the distinct chunks of the text, each weighted by how often it
        occurs, so a few MB of text with a modest number of distinct words trains in seconds.
        The most frequent pair is merged; ties go to the smallest pair, comparing (left, right)
        ids, so training is deterministic. After a merge only the chunks that held the pair are
        recounted, and a heap keeps finding the most frequent pair cheap.
        """
        num_merges = vocab_size - NUM_BYTES - len(SPECIAL_TOKENS)
        if num_merges < 0:
            raise ValueError(
                f"vocab_size must be at least {NUM_BYTES + len(SPECIAL_TOKENS)} "
                f"(256 bytes + 3 special tokens), got {vocab_size}"
            )
        chunk_counts = Counter(SPLIT_PATTERN.findall(text))
        chunks = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        weights = list(chunk_counts.values())

        pair_counts: Counter[tuple[int, int]] = Counter()
        # May list chunks that no longer hold the pair; recounting those changes nothing.
        chunks_with_pair: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for index, ids in enumerate(chunks):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += weights[index]
                chunks_with_pair[pair].add(index)

        # The heap's top is the most frequent pair; on equal counts, the smallest (left, right).
        # Counts change as merges go on: a changed pair is pushed again with its new count, and
        # entries whose count is out of date are thrown away when they reach the top.
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        merges = []
        while len(merges) < num_merges:
            while heap and pair_counts.get(heap[0][1]) != -heap[0][0]:
                heapq.heappop(heap)
            if not heap and allow_fewer:
                break
            if not heap:
                raise ValueError(
                    f"text allows only {len(merges)} merges, so vocab_size can be at most "
                    f"{NUM_BYTES + len(merges) + len(SPECIAL_TOKENS)}, got {vocab_size}"
                )
            _, best = heapq.heappop(heap)
            new_id = NUM_BYTES + len(merges)
            merges.append(best)
            changed_pairs = set()
            for index in chunks_with_pair.pop(best):
                old_ids, weight = chunks[index], weights[index]
                new_ids = merge_pair(old_ids, best, new_id)
                for pair in zip(old_ids, old_ids[1:]):
                    pair_counts[pair] -= weight
                    if pair_counts[pair] == 0:  # gone everywhere: must not be picked again
                        del pair_counts[pair]
                    changed_pairs.add(pair)
                for pair in zip(new_ids, new_ids[1:]):
                    pair_counts[pair] += weight
                    chunks_with_pair[pair].add(index)
                    changed_pairs.add(pair)
                chunks[index] = new_ids
            for pair in changed_pairs & pair_counts.keys():
                heapq.heappush(heap, (-pair_counts[pair], pair))
        return cls(merges)

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Text -> ids. Special-token names in the text are encoded as ordinary bytes."""
        ids = []
        for chunk in SPLIT_PATTERN.findall(text):
            if chunk not in self._chunk_cache:  # words repeat a lot; encode each one once
                self._chunk_cache[chunk] = self._encode_chunk(chunk)
            ids.extend(self._chunk_cache[chunk])
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            # Apply the earliest-learned merge that is present, as training did.
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merge_ids.get(p, float("inf")))
            if pair not in self.merge_ids:
                break
            ids = merge_pair(ids, pair, self.merge_ids[pair])
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> text. Special ids become their names; invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- saving
    def to_dict(self) -> dict:
        """Plain data only (str, int, lists), so torch.load(weights_only=True) can read it."""
        return {
            "format": FORMAT,
            "merges": [list(pair) for pair in self.merges],
            "special_tokens": list(SPECIAL_TOKENS),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Tokenizer":
        """Inverse of to_dict; refuses data written in another format."""
        if data.get("format") != FORMAT:
            raise ValueError(f"expected tokenizer format {FORMAT!r}, got {data.get('format')!r}")
        if data.get("special_tokens") != list(SPECIAL_TOKENS):
            raise ValueError(f"expected special tokens {list(SPECIAL_TOKENS)}")
        for i, (left, right) in enumerate(data["merges"]):
            if not (0 <= left < NUM_BYTES + i and 0 <= right < NUM_BYTES + i):
                raise ValueError(f"merge {i} uses an id that does not exist yet: {left, right}")
        return cls(data["merges"])

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
