"""Tests for tokenizer.py. Expected values come from hand-worked examples, a naive BPE, or plain
UTF-8 bytes."""

import json
import random

import pytest

from tokenizer import FORMAT, SPLIT_PATTERN, Tokenizer

ENGLISH = (
    "A tokenizer turns text into numbers that a language model can read. This one starts from the "
    "256 possible byte values and learns, from a training text, which neighbouring pieces appear "
    "together most often. Each learned merge becomes a new token, so frequent words shrink to one "
    "or two tokens while rare words, names and symbols still spell out byte by byte. Nothing is "
    "ever unknown: every string, in every script, has an encoding.\n\n"
) + " ".join(
    f"The {animal} {verb} over the {thing} at {hour} o'clock, and then it slept."
    for animal in ("cat", "dog", "red fox", "small bird")
    for verb in ("jumps", "runs", "walks", "looks")
    for thing in ("fence", "river", "old wall", "green hill")
    for hour in (3, 7, 12)
)
CHINESE = (
    "春天来了，山上的花都开了。小河里的水慢慢地流着，孩子们在河边玩耍，"
    "老人们坐在树下喝茶聊天。天空很蓝，白云像棉花一样飘来飘去。"
    "我们学习语言，是为了更好地理解这个世界，也为了让别人理解我们。"
)
ROUND_TRIP = {
    "empty": "",
    "one space": " ",
    "ascii": "hello world",
    "spaces": "   leading, trailing and   multiple   spaces   ",
    "chinese": CHINESE,
    "mixed scripts": "中文和English混在一起，还有数字123。",
    "emoji": "emoji: 🐍 ❤️ 👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 keycap 1️⃣",
    "control": "control: \x00 nul, \ttab, \r\nCRLF, \x1b[31mred\x1b[0m, \x7f, \x0b\x0c",
    "combining": "combining: e\u0301 n\u0303 a\u0308\u0304 Z\u0351\u0352\u0353alg\u0300o",
    "digits": "digits 3.14159 1234567890 ١٢٣ and snake_case __init__",
    "rtl and greek": "مرحبا بالعالم — עברית — ελληνικά — русский",
    "special names": "<bos><eos><pad><|endoftext|>",
    "newlines": "\n\n\nline\n  \n\t \r",
}
ROUND_TRIP_TEXTS = list(ROUND_TRIP.values())
round_trip_cases = pytest.mark.parametrize("text", ROUND_TRIP_TEXTS, ids=list(ROUND_TRIP))


@pytest.fixture(scope="module")
def english_tokenizer():
    return Tokenizer.train(ENGLISH, vocab_size=400)


@pytest.fixture(scope="module")
def chinese_tokenizer():
    return Tokenizer.train(CHINESE, vocab_size=300)


def test_hand_worked_example():
    """Training on "aaab aab ab" with vocab_size=262: 262 - 256 bytes - 3 specials = 3 merges.

    Bytes: " " = 32, "a" = 97, "b" = 98.
    Pre-split chunks (a word keeps its leading space), each seen once:
        "aaab" = [97, 97, 97, 98]    " aab" = [32, 97, 97, 98]    " ab" = [32, 97, 98]
    Pair counts (overlapping pairs all count; "aaa" holds (97, 97) twice):
        (97, 97): 2 + 1 + 0 = 3    (97, 98): 1 + 1 + 1 = 3    (32, 97): 0 + 1 + 1 = 2
    Merge 1: (97, 97) and (97, 98) tie at 3; the smaller pair wins: (97, 97) -> 256.
        Scanning left to right, "aaa" becomes [256, 97], not [97, 256]:
        [256, 97, 98]    [32, 256, 98]    [32, 97, 98]
    Pair counts: (97, 98): 1 + 0 + 1 = 2; (256, 97), (32, 256), (256, 98), (32, 97): 1 each.
    Merge 2: (97, 98) -> 257.
        [256, 257]    [32, 256, 98]    [32, 257]
    Pair counts: (256, 257), (32, 256), (256, 98), (32, 257): 1 each.
    Merge 3: four-way tie at 1; the smallest is (32, 256) -> 258.
        [256, 257]    [258, 98]    [32, 257]
    Special ids follow the merges: bos 259, eos 260, pad 261.

    Encoding "aaab aab ab" applies the lowest-ranked merge present until none applies:
        "aaab" [97, 97, 97, 98] -(97,97)-> [256, 97, 98] -(97,98)-> [256, 257]
        " aab" [32, 97, 97, 98] -(97,97)-> [32, 256, 98] -(32,256)-> [258, 98]
        " ab"  [32, 97, 98]     -(97,98)-> [32, 257]
        -> [256, 257, 258, 98, 32, 257]
    Text never seen in training: "aaaa" -(97,97)-> [256, 256]; "ba" has no merge -> [98, 97].
    """
    tok = Tokenizer.train("aaab aab ab", vocab_size=262)
    assert tok.merges == [(97, 97), (97, 98), (32, 256)]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (259, 260, 261)
    assert tok.vocab_size == 262
    assert tok.encode("aaab aab ab") == [256, 257, 258, 98, 32, 257]
    assert tok.encode("aaaa") == [256, 256]
    assert tok.encode("ba") == [98, 97]
    assert tok.decode([256, 257, 258]) == "aaab aa"


def test_training_stops_when_pairs_run_out():
    """After the 3 merges above each chunk has two tokens left ([256, 257], [258, 98], [32, 257]),
    so 3 more merges are possible: 6 in all, vocab_size at most 256 + 6 + 3 = 265."""
    assert Tokenizer.train("aaab aab ab", vocab_size=265).vocab_size == 265
    with pytest.raises(ValueError, match="only 6 merges"):
        Tokenizer.train("aaab aab ab", vocab_size=266)
    with pytest.raises(ValueError, match="only 0 merges"):
        Tokenizer.train("", vocab_size=260)


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="at least 259"):
        Tokenizer.train(ENGLISH, vocab_size=258)


def naive_merges(text, num_merges):
    """Reference BPE: every chunk occurrence kept separately, all pairs recounted at each step."""
    chunks = [list(chunk.encode("utf-8")) for chunk in SPLIT_PATTERN.findall(text)]
    merges = []
    for new_id in range(256, 256 + num_merges):
        counts = {}
        for ids in chunks:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        top = max(counts.values())
        best = min(pair for pair, count in counts.items() if count == top)
        merges.append(best)
        for ids in chunks:
            i = 0
            while i < len(ids) - 1:
                if (ids[i], ids[i + 1]) == best:
                    ids[i : i + 2] = [new_id]
                i += 1
    return merges


@pytest.mark.parametrize("name", ["english", "chinese", "emoji"])
def test_training_matches_naive_reference(name):
    text = {"english": ENGLISH[:3000], "chinese": CHINESE, "emoji": ROUND_TRIP["emoji"]}[name]
    assert Tokenizer.train(text, vocab_size=259 + 30).merges == naive_merges(text, 30)


@round_trip_cases
def test_split_keeps_every_character(text):
    assert "".join(SPLIT_PATTERN.findall(text)) == text


@round_trip_cases
def test_round_trip_english_tokenizer(english_tokenizer, text):
    assert english_tokenizer.decode(english_tokenizer.encode(text)) == text


@round_trip_cases
def test_round_trip_chinese_tokenizer(chinese_tokenizer, text):
    assert chinese_tokenizer.decode(chinese_tokenizer.encode(text)) == text


def test_round_trip_random_code_points(english_tokenizer, chinese_tokenizer):
    rng = random.Random(0)
    # Any code point except the surrogates U+D800..U+DFFF, which UTF-8 cannot encode.
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for _ in range(200):
        text = "".join(chr(rng.choice(code_points)) for _ in range(rng.randint(1, 20)))
        for tok in (english_tokenizer, chinese_tokenizer):
            assert tok.decode(tok.encode(text)) == text


def test_chinese_tokenizer_learned_whole_characters(chinese_tokenizer, english_tokenizer):
    # "们" (3 UTF-8 bytes) occurs 4 times in CHINESE: one token after training on it, 3 bytes before.
    assert len(chinese_tokenizer.encode("们")) == 1
    assert english_tokenizer.encode("们") == list("们".encode("utf-8"))


def test_merges_never_cross_chunk_boundaries(english_tokenizer):
    # Every learned token is a piece of a single chunk, so it splits into exactly one chunk.
    for token_id in range(256, english_tokenizer.bos_id):
        piece = english_tokenizer.decode([token_id])
        assert len(SPLIT_PATTERN.findall(piece)) == 1, repr(piece)


def test_special_tokens(english_tokenizer):
    tok = english_tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (397, 398, 399)
    assert tok.vocab_size == 400
    text = "<bos><eos><pad><|endoftext|>"
    ids = tok.encode(text)
    assert not {tok.bos_id, tok.eos_id, tok.pad_id} & set(ids)
    assert max(ids) < tok.bos_id
    # Documented: special ids decode to their names, so they stay visible when debugging.
    ids = [tok.bos_id, *tok.encode("hi"), tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "<bos>hi<eos><pad>"


def test_save_load_and_dict_round_trip(english_tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    english_tokenizer.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == FORMAT
    for copy in (Tokenizer.load(path), Tokenizer.from_dict(english_tokenizer.to_dict())):
        assert copy.merges == english_tokenizer.merges
        assert copy.vocab_size == english_tokenizer.vocab_size
        for text in ROUND_TRIP_TEXTS:
            assert copy.encode(text) == english_tokenizer.encode(text)


def test_dict_loads_in_torch_checkpoint_with_weights_only(english_tokenizer, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "checkpoint.pt"
    torch.save({"tokenizer": english_tokenizer.to_dict()}, path)
    loaded = torch.load(path, weights_only=True)["tokenizer"]
    assert Tokenizer.from_dict(loaded).merges == english_tokenizer.merges


def test_other_format_is_refused(english_tokenizer):
    data = english_tokenizer.to_dict()
    with pytest.raises(ValueError, match="format"):
        Tokenizer.from_dict({**data, "format": "some-other-bpe/2"})
    with pytest.raises(ValueError, match="format"):
        Tokenizer.from_dict({"merges": data["merges"]})
    with pytest.raises(ValueError, match="does not exist yet"):
        Tokenizer.from_dict({**data, "merges": [[300, 97]]})


def test_compression_against_byte_count(english_tokenizer):
    # Reference independent of BPE: the UTF-8 bytes of the text.
    for text in ROUND_TRIP_TEXTS:
        assert len(english_tokenizer.encode(text)) <= len(text.encode("utf-8"))
    assert len(english_tokenizer.encode(ENGLISH)) < len(ENGLISH.encode("utf-8")) / 2
    no_merges = Tokenizer.train(ENGLISH, vocab_size=259)
    for text in ROUND_TRIP_TEXTS + [ENGLISH]:
        assert no_merges.encode(text) == list(text.encode("utf-8"))
