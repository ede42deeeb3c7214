"""Evaluate a trained minivlp checkpoint (§3.2 step 4, §3.4).

    python eval.py --ckpt out/minivlp.pt [--json metrics.json]      # every metric, every split
    python eval.py --ckpt out/minivlp.pt --caption IMAGE.png         # describe an image
    python eval.py --ckpt out/minivlp.pt --ask IMAGE.png "what colour is the circle?"   # the same,
                                                                     # then answer a question
    python eval.py --ckpt out/minivlp.pt --name a.png:dax b.png:kep c.png   # name c from examples
    python eval.py --compare out/locked/metrics.json out/random/metrics.json   # side by side
    python eval.py --ckpt out/minivlp.pt --data pairs.tsv --classes cat,dog --templates "a {}."

Retrieval both ways and zero-shot accuracy (contrastive head); captioning and visual question
answering through the frozen LM (prefix head), with the same LM answering blind as the baseline.
"""

import argparse
import json
import math
import re
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from minivlp import (COLOURS, PRECISIONS, SHAPES, SIZES, WORLDS, Glyph, LanguageModel, LMConfig,
                     TextTower, VisualEmbedder, WorldConfig, caption, chained, chained_corpus,
                     embed_images, environment, freeze, generate, image_context, load_checkpoint,
                     load_image, make_eval_splits, make_support_split, naming_episodes,
                     object_questions, pairs_split, question_prompt, questions, read_pairs, render,
                     resolve_device, retrieval_metrics, save_json, zeroshot_accuracy,
                     zeroshot_attributes)
from tokenizer import Tokenizer


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, no abbreviated flags (--lm means --lm, not --lm-lr), and
    the description printed as written: the module docstring, its usage examples included."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                         **kwargs)

    def error(self, message):
        """A bad flag is one line on stderr and exit status 2, without the usage dump."""
        self.exit(2, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------------------------
# Generated text: cut it, parse it with the grammar, score it.
# ------------------------------------------------------------------------------------------------

PLAIN_WORD = {synonym: word for world in WORLDS.values()
              for word, synonym in world["synonyms"].items()}
SCENE_OF_CAPTION = {caption(scene): scene for world in WORLDS.values() for scene in world["all"]()}


def first_line(tokenizer, ids):
    """Generated ids -> their text up to the first newline or special token."""
    specials = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    cut = next((k for k, i in enumerate(ids) if i in specials), len(ids))
    return tokenizer.decode(ids[:cut]).split("\n")[0].strip()


def parse_caption(text):
    """A caption in plain or synonym wording -> its Scene, or None if the grammar can't make it."""
    return SCENE_OF_CAPTION.get(" ".join(PLAIN_WORD.get(word, word) for word in text.split(" ")))


def attributes(scene):
    """What a caption must get right: colours and shapes, then size and position or relation
    (glyphs: colour, letter, size, background)."""
    if isinstance(scene, Glyph):
        return zeroshot_attributes(scene)
    named = {"colour": tuple(c for c, _ in scene.objects), "shape": tuple(s for _, s in scene.objects)}
    if len(scene.objects) == 1:
        return {**named, "size": scene.size, "position": scene.where}
    return {**named, "relation": scene.where}


def bleu4(candidates, references):
    """Corpus-level BLEU-4 (Papineni et al. 2002) with one reference per candidate.

        BLEU = BP * exp( (1/4) Σ_n log p_n ),  p_n = clipped n-gram matches / candidate n-grams
        BP = 1 if c > r else exp(1 - r / c),     c, r = total candidate and reference lengths
    Counts are summed over the corpus before dividing (not averaged sentence by sentence)."""
    matches, totals, c, r = [0] * 4, [0] * 4, 0, 0
    for candidate, reference in zip(candidates, references):
        candidate, reference = candidate.split(), reference.split()
        c, r = c + len(candidate), r + len(reference)
        for n in range(1, 5):
            candidate_ngrams = Counter(tuple(candidate[i:i + n]) for i in range(len(candidate) - n + 1))
            reference_ngrams = Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
            matches[n - 1] += sum(min(k, reference_ngrams[g]) for g, k in candidate_ngrams.items())
            totals[n - 1] += max(0, len(candidate) - n + 1)
    if min(matches) == 0:
        return 0.0
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


# ------------------------------------------------------------------------------------------------
# Captioning and question answering through the frozen LM.
# ------------------------------------------------------------------------------------------------

def describe(lm, tokenizer, prefixes, sample_temperature=0.0, seed=0, batch_size=500):
    """(N, K, C) prefixes -> N captions: '<bos> [image] \n' continued until the newline."""
    newline = torch.tensor(tokenizer.encode("\n"), device=prefixes.device)
    generator = torch.Generator(device=prefixes.device).manual_seed(seed)
    texts = []
    for i in range(0, len(prefixes), batch_size):
        context_emb = image_context(lm, tokenizer, prefixes[i:i + batch_size])  # (B, 1 + K, C)
        prompt = newline.expand(len(context_emb), -1)                           # (B, 1)
        new = generate(lm, context_emb, prompt, lm.context, sample_temperature, generator,
                       stop_ids=(newline[-1].item(), tokenizer.eos_id))  # a caption is one line
        texts += [first_line(tokenizer, row.tolist()) for row in new]
    return texts


def query_length(tokenizer, question, reference):
    """Positions the LM reads to answer `question` with the `reference` answer: the prompt and
    the answer (the newline after it is predicted from the last answer token)."""
    return len(tokenizer.encode(question_prompt(question))) + len(tokenizer.encode(f" {reference}"))


def verdict(text):
    """What an answer says: the 'yes' or 'no' after ', so ' in an `exists` chain, the last word
    of a `chained` answer ('the circle is red', 'the red object is a circle': an LM of the
    reading recipe answers so), else the whole answer (so a caption that happens to end with the
    right word is not a right answer)."""
    said = text.rsplit(", so ", 1)[-1]
    chain = re.fullmatch(r"the \w+(?: object)? is (?:a )?(\w+)", said)
    return chain[1] if chain else said


def continue_lines(lm, tokenizer, contexts, prompts, max_new_tokens=None, batch_size=500):
    """Continue each (P, C) context and its prompt (a list of ids) to the end of the line: -> the
    text generated, up to its newline, or max_new_tokens if given (a batch runs until its last
    row ends its line, so a bound near the longest answer saves time where some never do).
    Rows are batched by context and prompt length so that no row needs padding in front."""
    line_ends = (tokenizer.encode("\n")[-1], tokenizer.eos_id)  # a reading LM may end with <eos>
    texts = [None] * len(prompts)
    by_length = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault((len(contexts[i]), len(prompt)), []).append(i)
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            context_emb = torch.stack([contexts[i] for i in chunk])                # (B, P, C)
            prompt = torch.tensor([prompts[i] for i in chunk], device=context_emb.device)
            new = generate(lm, context_emb, prompt, max_new_tokens or lm.context,
                           stop_ids=line_ends)
            for i, row in zip(chunk, new.tolist()):
                texts[i] = first_line(tokenizer, row)
    return texts


def answer(lm, tokenizer, contexts, question_texts, max_new_tokens=None, batch_size=500):
    """Answer each question after its (P, C) context: '<context> \n q: QUESTION a:' -> the
    answer line (continue_lines)."""
    prompts = [tokenizer.encode(question_prompt(question)) for question in question_texts]
    return continue_lines(lm, tokenizer, contexts, prompts, max_new_tokens, batch_size)


def own_caption_context(lm, tokenizer, generated, room):
    """Captions the LM wrote from images -> N (P, C) contexts '<bos> CAPTION', each caption cut to
    at most `room` tokens. The image's prefix is left out of the row: the LM answers from its own
    description as it answers from text, which reads each object better than a row that still
    holds the prefix (tutorials/results.md, "Answering from the caption alone")."""
    device = lm.token_emb.weight.device
    return [lm.token_emb(torch.tensor([tokenizer.bos_id] + tokenizer.encode(text)[:room],
                                      device=device))
            for text in generated]


def solved_examples(lm, tokenizer, support_prefixes, support_scenes, kind, shots, room, rng,
                    chain=False):
    """(P, C) embeddings of up to `shots` solved examples of one question kind, each its own
    document: '<bos> [image] \n q: QUESTION a: ANSWER <eos>' (Frozen's few-shot prompt), ANSWER
    `chained` if chain. Examples are added while the total stays within `room` positions.
    Returns them and their number."""
    pieces, length = [], 0
    for i in rng.permutation(len(support_scenes)):
        if len(pieces) == shots:
            break
        scene = support_scenes[i]
        matching = [(q, a) for q, a, k in questions(scene, rng) + object_questions(scene)
                    if k == kind]
        if not matching:
            continue
        q, a = matching[0]
        a = chained(q, a) if chain else a
        ids = torch.tensor(tokenizer.encode(f"{question_prompt(q)} {a}") + [tokenizer.eos_id],
                           device=support_prefixes.device)
        piece = torch.cat([image_context(lm, tokenizer, support_prefixes[i:i + 1])[0],
                           lm.token_emb(ids)])                                     # (1 + K + L, C)
        if length + len(piece) > room:
            break
        pieces.append(piece)
        length += len(piece)
    width = lm.token_emb.embedding_dim
    return (torch.cat(pieces) if pieces else support_prefixes.new_zeros(0, width)), len(pieces)


# Re-ranking by v. The scored caption is the frozen LM's own greedy description (Frozen). Re-ranking
# lets the contrastive head help the decoder, as CLIP re-ranks a generator's samples: the LM
# proposes, and the image's vector v (§4.2) picks the proposal whose text vector t is nearest.
# train.py and eval.py score it beside the greedy caption, among the greedy one and 8 samples.

RERANK_SAMPLES = 8


def caption_candidates(lm, tokenizer, prefixes, samples):
    """(N, K, C) prefixes -> N tuples: an image's greedy caption, then `samples` captions sampled
    at temperature 1 (seeds 1 to samples)."""
    return list(zip(describe(lm, tokenizer, prefixes), *(
        describe(lm, tokenizer, prefixes, sample_temperature=1.0, seed=seed)
        for seed in range(1, samples + 1))))


def choose_by_v(candidates, image_emb, embed_texts):
    """For each of N images, the candidate caption whose text embedding has the highest cosine
    with the image's: candidates, N lists of captions; image_emb (N, C); embed_texts: M texts ->
    (M, C). Each distinct caption is embedded once."""
    texts = sorted({text for options in candidates for text in options})
    row_of = {text: row for row, text in enumerate(texts)}
    text_emb = F.normalize(embed_texts(texts).float(), dim=1)                  # (M, C)
    image_emb = F.normalize(image_emb.float(), dim=1)                          # (N, C)
    chosen = []
    for options, v in zip(candidates, image_emb):
        cosines = text_emb[[row_of[text] for text in options]] @ v             # (candidates,)
        chosen.append(options[cosines.argmax().item()])
    return chosen


@torch.no_grad()
def prefix_metrics(lm, tokenizer, prefixes, scenes, support_prefixes, support_scenes, shots=2,
                   vqa_images=500, seed=0, chain=False):
    """Captioning (exact match, per-attribute accuracy, BLEU-4) and VQA accuracy per question kind
    (of the `verdict`), on the first `vqa_images` images, in five settings:
      vqa_acc           '<bos> [image] \n q: ... a:' (Frozen); on training images the prefix was
                        taught this prompt by the LM reading the caption (teacher_loss), never
                        by an answer label
      vqa_describe_acc  '<bos> CAPTION \n q: ... a:', CAPTION the LM's own caption of the
                        image: the LM answers from what it said (describe, then answer)
      vqa_blind_acc     '<bos> \n q: ... a:', no image: what the LM's prior alone gets right
      vqa_fewshot_acc   up to `shots` solved examples of the same kind of question first
                        (as many as fit in the LM's context), then the vqa_acc prompt
      vqa_text_acc      '<bos> TRUE CAPTION \n q: ... a:', no image: how well the LM answers
                        from a perfect description, for most kinds about the most an image gets
    chain: the LM learned `chained` answers (the reading recipe), so the answers it is held to
    and its solved examples are written so; either way the `verdict` is what counts."""
    generated = describe(lm, tokenizer, prefixes)
    parsed = [parse_caption(text) for text in generated]
    metrics = {"caption_exact_match": float(np.mean([p == s for p, s in zip(parsed, scenes)])),
               "caption_bleu4": bleu4(generated, [caption(scene) for scene in scenes]),
               "caption_samples": generated[:5]}
    for name in sorted({name for scene in scenes for name in attributes(scene)}):
        scored = [p is not None and attributes(p).get(name) == attributes(s)[name]
                  for p, s in zip(parsed, scenes) if name in attributes(s)]
        metrics[f"caption_acc_{name}"] = float(np.mean(scored))

    rng = np.random.default_rng(seed)
    asked = [(i, q, a, kind) for i, scene in enumerate(scenes[:vqa_images])
             for q, a, kind in questions(scene, rng)]
    # Two-object scenes asked about each object by name, and about an absent combination: an
    # average over every scene would hide an LM that answers by position (object_questions)
    asked += [(i, q, a, kind) for i, scene in enumerate(scenes[:vqa_images])
              for q, a, kind in object_questions(scene)]
    if chain:
        asked = [(i, q, chained(q, a), kind) for i, q, a, kind in asked]
    # the question kinds, then their split by object (after them, so that drawing the few-shot
    # examples of the split leaves those of the kinds as they were)
    kinds = sorted({kind for *_, kind in asked} - set(OBJECT_KINDS)) + [
        kind for kind in OBJECT_KINDS if any(k == kind for *_, k in asked)]
    with_image = image_context(lm, tokenizer, prefixes)                        # (N, 1 + K, C)
    blind = lm.token_emb.weight[tokenizer.bos_id][None]                        # (1, C): <bos> only
    # Positions left for what precedes a query: for each kind (an `exists` chain is long, so
    # fewer solved examples fit before it), and for all kinds (the caption read before each).
    room = {kind: lm.context - with_image.shape[1] - max(query_length(tokenizer, q, a)
                                                         for _, q, a, k in asked if k == kind)
            for kind in kinds}
    # With a small vocabulary (many tokens a question) or a long prefix, a kind may not fit at all
    too_long = [kind for kind in kinds if room[kind] < 0]
    if too_long:
        print(f"warning: {', '.join(too_long)} questions do not fit after the image in the LM "
              f"context of {lm.context}: not asked", file=sys.stderr)
    kinds = [kind for kind in kinds if room[kind] >= 0]
    asked = [question for question in asked if question[3] in kinds]
    if not kinds:
        return metrics
    caption_room = min(room[kind] for kind in kinds)
    said = own_caption_context(lm, tokenizer, generated[:vqa_images], caption_room)
    true_text = [torch.cat([blind, lm.token_emb(torch.tensor(
                     tokenizer.encode(caption(scene))[:caption_room], device=prefixes.device))])
                 for scene in scenes[:vqa_images]]
    examples = {kind: solved_examples(lm, tokenizer, support_prefixes, support_scenes, kind, shots,
                                      room[kind], rng, chain) for kind in kinds}
    settings = {"vqa_acc": [with_image[i] for i, *_ in asked],
                "vqa_describe_acc": [said[i] for i, *_ in asked],
                "vqa_blind_acc": [blind] * len(asked),
                "vqa_fewshot_acc": [torch.cat([examples[kind][0], with_image[i]])
                                    for i, _, _, kind in asked],
                "vqa_text_acc": [true_text[i] for i, *_ in asked]}
    for kind in kinds:  # one kind at a time: generation stops after that kind's longest answer
        rows = [n for n, (*_, k) in enumerate(asked) if k == kind]
        longest_answer = max(len(tokenizer.encode(f" {asked[n][2]}")) for n in rows) + 1
        for setting, contexts in settings.items():
            answers = answer(lm, tokenizer, [contexts[n] for n in rows],
                             [asked[n][1] for n in rows], longest_answer)
            metrics[f"{setting}_{kind}"] = float(np.mean([verdict(given) == verdict(asked[n][2])
                                                          for given, n in zip(answers, rows)]))
    metrics.update({f"vqa_fewshot_shots_{kind}": count for kind, (_, count) in examples.items()})
    return metrics


@torch.no_grad()
def text_caption_metrics(lm, tokenizer, prefixes, references):
    """Captioning on your own data, where no grammar parses a caption: exact match with the
    image's own caption (spaces and case aside) and corpus BLEU-4."""
    generated = describe(lm, tokenizer, prefixes)
    same = [g.lower().split() == r.lower().split() for g, r in zip(generated, references)]
    return {"caption_exact_match": float(np.mean(same)),
            "caption_bleu4": bleu4([g.lower() for g in generated], [r.lower() for r in references]),
            "caption_samples": generated[:5]}


# Naming from context (Frozen's fast binding, §3.4): shown an image and 'this is a dax', another and
# 'this is a blicket', name a new image of the first kind. The reading corpus names objects with
# fresh words in text only: 'a red circle is a zuv \n a blue square is a kep \n a red circle is a'
# -> 'zuv' (naming_document). Here images take the place of the descriptions. No name was ever
# paired with an image, so the LM can name the query only by matching it with a support image and
# copying the name written after that one.

# (ways, shots): with three shots, 2 ways (7 lines of about 9 positions) exceed the LM's 64
NAMING = [(2, 1), (2, 2), (5, 1)]


def naming_positions(tokenizer, prefix_tokens):
    """Where the spelled prefix of a one-object image holds 'a', its colour and its shape:
    positions 0, 2, 3 of 'a small red circle on the left', if each of those words is one token
    and the prefix has that many vectors (else None). An image's line in a naming prompt is these
    three vectors, as short as the corpus's 'a red circle': the whole prefix (16 vectors) would
    let at most three images into the LM's 64 positions."""
    one_token = all(len(tokenizer.encode(f"a {size} {colour} {shape}")) == 4
                    for size in SIZES for colour in COLOURS for shape in SHAPES)
    return [0, 2, 3] if one_token and prefix_tokens > 3 else None


def naming_vectors(lm, tokenizer, prefixes):
    """(M, K, C) prefixes -> (M, 3, C): each image's vectors at naming_positions, at the length
    image_context gives them."""
    return image_context(lm, tokenizer, prefixes)[:, 1:][:, naming_positions(tokenizer,
                                                                              prefixes.shape[1])]


def nearest_tokens(lm, vectors):
    """(..., C) vectors -> (...) ids of the token embeddings of highest cosine: what each vector
    of a spelled prefix reads as."""
    return (F.normalize(vectors, dim=-1) @ F.normalize(lm.token_emb.weight, dim=-1).T).argmax(-1)


def naming_row(lm, tokenizer, lines, names, query_line):
    """(L, C) embeddings of one naming prompt: '<bos> LINE is a NAME \n ... QUERY_LINE' (the
    prompt ' is a' follows it). lines and query_line: (n, C) embeddings of what describes each
    object (an image's vectors or a description's tokens); query_line may be empty (blind)."""
    embed = lambda text: lm.token_emb(torch.tensor(tokenizer.encode(text), device=query_line.device))
    pieces = [lm.token_emb.weight[tokenizer.bos_id][None]]                      # (1, C)
    for line, name in zip(lines, names):
        pieces += [line, embed(f" is a {name}\n")]
    return torch.cat(pieces + [query_line])


def naming_lines(lm, tokenizer, embedder, episodes, image_size, device, precision="auto",
                 seed=0):
    """What stands for each scene of naming_episodes in a prompt: per episode, its scenes' images
    as three prefix vectors each (naming_positions) and their descriptions 'a red circle', both
    (S + 1, 3, C), S support scenes then the query. The images are drawn anew (seed)."""
    rng = np.random.default_rng((seed, 10, len(episodes[0][0])))
    scenes = [scene for support, _, query, _ in episodes for scene in support + [query]]
    images = torch.from_numpy(np.stack([render(scene, image_size, rng) for scene in scenes]))
    _, prefixes = embed_images(embedder, images.permute(0, 3, 1, 2), device, precision=precision)
    seen = naming_vectors(lm, tokenizer, prefixes)                                  # (M, 3, C)
    said = lm.token_emb(torch.tensor([tokenizer.encode("a {} {}".format(*scene.objects[0]))
                                      for scene in scenes], device=device))       # (M, 3, C)
    per_episode = len(episodes[0][0]) + 1
    return seen.split(per_episode), said.split(per_episode)


def named_right(lm, tokenizer, rows, names):
    """(L, C) naming prompts (naming_row) and the name each should get -> right or not, each:
    the LM continues ' is a' with the name whole, then ends the line."""
    prompt = tokenizer.encode(" is a")
    said = continue_lines(lm, tokenizer, rows, [prompt] * len(rows), 8)
    return [given == name for given, name in zip(said, names)]


@torch.no_grad()
def naming_metrics(lm, tokenizer, embedder, image_size, device, precision="auto", n_rows=200,
                   seed=0):
    """For each (N ways, K shots) of NAMING, the share of queries named right (named_right), on
    the same naming_episodes in four settings:
      binding_acc           '<bos> [image] is a dax \n [image] is a kep \n [query image] is a'
      binding_text_acc      each [image] replaced by its description 'a red circle': the LM's
                            ceiling (its reading test names_Nway, on these episodes)
      binding_blind_acc     the query's image left out ('... kep \n is a'): no better than chance
      binding_shuffled_acc  the N names shuffled among the support pairs, scored against the
                            names before shuffling: 1/N if the LM reads the names from its row
    Every run is asked the same episodes and images (seed), as it is asked the same questions.
    An episode whose prompt and name exceed the LM's context is left out; binding_rows_* says
    how many were asked."""
    if naming_positions(tokenizer, embedder.prefix_shape[0]) is None:
        return {}
    metrics = {}
    rng = np.random.default_rng((seed, 11))
    for ways, shots in NAMING:
        episodes = naming_episodes(ways, shots, n_rows, seed)
        settings = {"": [], "text_": [], "blind_": [], "shuffled_": []}
        truth = []
        for (_, names, _, name), seen, said in zip(episodes, *naming_lines(
                lm, tokenizer, embedder, episodes, image_size, device, precision, seed)):
            distinct = sorted(set(names))
            renamed = dict(zip(distinct, rng.permutation(distinct)))   # a name for each pair
            rows = {"": naming_row(lm, tokenizer, seen[:-1], names, seen[-1]),
                    "text_": naming_row(lm, tokenizer, said[:-1], names, said[-1]),
                    "blind_": naming_row(lm, tokenizer, seen[:-1], names, seen[-1][:0]),
                    "shuffled_": naming_row(lm, tokenizer, seen[:-1],
                                            [renamed[n] for n in names], seen[-1])}
            room = lm.context - len(tokenizer.encode(f" is a {name}\n"))
            if max(len(row) for row in rows.values()) > room:
                continue
            for setting, row in rows.items():
                settings[setting].append(row)
            truth.append(name)
        for setting, rows in settings.items():
            metrics[f"binding_{setting}acc_{ways}way_{shots}shot"] = (
                float(np.mean(named_right(lm, tokenizer, rows, truth))) if truth else float("nan"))
        metrics[f"binding_rows_{ways}way_{shots}shot"] = len(truth)
    return metrics


def zeroshot_named_classes(image_emb, image_captions, classes, templates, embed_texts):
    """Zero-shot classification with class names and prompt templates from the command line.

    Each class is the mean unit text embedding of its templates filled with its name (CLIP's
    prompt ensembling); each image takes the nearest class. An image's true class is the one
    whose name its caption contains as whole words; images whose caption names no class, or more
    than one, are left out (zeroshot_images counts those scored)."""
    names = [name.lower().split() for name in classes]
    def named_in(text):
        words = text.lower().replace(",", " ").replace(".", " ").split()
        return [c for c, name in enumerate(names)
                if any(words[i:i + len(name)] == name for i in range(len(words)))]
    truth = [named_in(text) for text in image_captions]
    scored = [i for i, found in enumerate(truth) if len(found) == 1]
    if not scored:
        raise ValueError(f"--classes: no caption names exactly one of {classes}")
    prompts = embed_texts([template.format(name) for name in classes for template in templates])
    prompts = F.normalize(prompts, dim=1)                               # (classes * templates, C)
    class_emb = prompts.view(len(classes), len(templates), -1).mean(1)  # (classes, C)
    class_emb = F.normalize(class_emb, dim=1)
    predicted = (image_emb[scored] @ class_emb.T).argmax(dim=1).cpu()   # (scored,)
    right = predicted == torch.tensor([truth[i][0] for i in scored])
    return {"zeroshot_acc": right.float().mean().item(), "zeroshot_images": len(scored)}


# ------------------------------------------------------------------------------------------------
# Every metric of every split, and the tables.
# ------------------------------------------------------------------------------------------------

def evaluate(embedder, tower, splits, support, device, objective, classes=None, templates=None,
             precision="auto", rerank=0, chain=False):
    """{split name: metrics}: retrieval and zero-shot for the contrastive head, captioning and VQA
    for the prefix head, and in the shapes world naming from a few examples (under `test`). `paraphrase` holds the `test` images, so only its retrieval is new. With
    both heads, also the exact match of captions re-ranked by v among the greedy one and `rerank`
    samples (caption_exact_match_reranked; 0 leaves it out). chain: as in prefix_metrics.

    Splits of your own data (no scenes) get retrieval, captioning by text, and zero-shot over
    `classes` (with `templates`) when given; support is then None (no few-shot VQA)."""
    results = {}
    if support is not None:
        _, support_prefixes = embed_images(embedder, support.images, device, precision=precision)
    for name, split in splits.items():
        metrics = {"images": len(split.images), "captions": len(split.captions)}
        image_emb, prefixes = embed_images(embedder, split.images, device,
                                           precision=precision)                  # (N, C), (N, K, C)
        own_captions = [split.captions[j] for j in split.caption_index]
        if objective != "prefix":
            text_emb = tower(split.captions)                                    # (M, C)
            text_emb = F.normalize(text_emb, dim=1)
            metrics.update(retrieval_metrics((image_emb @ text_emb.T).cpu(), split.caption_index))
            if split.scenes is None and classes:
                metrics.update(zeroshot_named_classes(image_emb, own_captions, classes, templates,
                                                      tower))
            elif split.scenes is not None and name != "paraphrase":
                metrics.update(zeroshot_accuracy(image_emb.cpu(), split.scenes,
                                                 lambda texts: tower(texts).cpu()))
        if objective != "contrastive" and split.scenes is None:
            metrics.update(text_caption_metrics(tower.lm, tower.tokenizer, prefixes, own_captions))
        elif objective != "contrastive" and name != "paraphrase":
            metrics.update(prefix_metrics(tower.lm, tower.tokenizer, prefixes, split.scenes,
                                          support_prefixes, support.scenes, chain=chain))
            if name == "test" and not isinstance(split.scenes[0], Glyph):  # one naming table
                metrics.update(naming_metrics(tower.lm, tower.tokenizer, embedder,
                                              split.images.shape[-1], device, precision))
            if objective == "both" and rerank:
                chosen = choose_by_v(caption_candidates(tower.lm, tower.tokenizer, prefixes,
                                                        rerank), image_emb, tower)
                metrics["caption_exact_match_reranked"] = float(np.mean(
                    [parse_caption(text) == scene for text, scene in zip(chosen, split.scenes)]))
        results[name] = metrics
    return results


RETRIEVAL_COLUMNS = [("i→t R@1", "image_to_text_R@1"), ("i→t R@5", "image_to_text_R@5"),
                     ("t→i R@1", "text_to_image_R@1"), ("t→i R@5", "text_to_image_R@5"),
                     ("zs colour", "zeroshot_colour_acc"), ("zs shape", "zeroshot_shape_acc"),
                     ("zs size", "zeroshot_size_acc"), ("zs position", "zeroshot_position_acc"),
                     ("zs letter", "zeroshot_letter_acc"), ("zs backgr.", "zeroshot_background_acc"),
                     ("zero-shot", "zeroshot_acc")]
CAPTION_COLUMNS = [("exact", "caption_exact_match"), ("re-ranked", "caption_exact_match_reranked"),
                   ("BLEU-4", "caption_bleu4"),
                   ("colour", "caption_acc_colour"), ("shape", "caption_acc_shape"),
                   ("size", "caption_acc_size"), ("position", "caption_acc_position"),
                   ("relation", "caption_acc_relation"), ("letter", "caption_acc_letter"),
                   ("background", "caption_acc_background")]
VQA_KINDS = ["colour", "shape", "count", "position", "letter", "background", "size", "exists"]
OBJECT_KINDS = [f"{kind}_{which}" for kind in ("colour", "shape", "exists")
                for which in ("first", "second")] + ["exists_absent"]


def cell(value):
    """A number, or a list of one number per seed: 'mean (min–max)'."""
    if isinstance(value, list):
        low, high = min(value), max(value)
        return f"{sum(value) / len(value):.3f} ({low:.3f}–{high:.3f})" if high > low else f"{low:.3f}"
    return f"{value:.3f}"


def table(title, columns, rows):
    """rows: [(label, {key: value or list of values})] -> a plain-text table of the columns present."""
    columns = [(name, key) for name, key in columns if any(key in values for _, values in rows)]
    rows = [(label, values) for label, values in rows if any(key in values for _, key in columns)]
    if not rows:
        return ""
    cells = [[cell(values[key]) if key in values else "-" for _, key in columns] for _, values in rows]
    widths = [max(12, len(name) + 2, *(len(row[c]) + 2 for row in cells))
              for c, (name, _) in enumerate(columns)]
    width = max(len(label) for label, _ in [(title, None), *rows]) + 2
    lines = [f"{title:<{width}}" + "".join(f"{name:>{w}}" for (name, _), w in zip(columns, widths))]
    lines += [f"{label:<{width}}" + "".join(f"{text:>{w}}" for text, w in zip(row, widths))
              for (label, _), row in zip(rows, cells)]
    return "\n".join(lines) + "\n"


def format_table(results):
    """Retrieval, captioning and VQA tables, one row per split (VQA: one per setting)."""
    text = table("retrieval / zero-shot", RETRIEVAL_COLUMNS, list(results.items()))
    text += table("captioning", CAPTION_COLUMNS, list(results.items()))
    settings = {"image": "vqa_acc", "own caption": "vqa_describe_acc",
                "blind": "vqa_blind_acc", "image, examples first": "vqa_fewshot_acc",
                "true caption, no image": "vqa_text_acc"}
    vqa_rows = [(f"{name} {setting}", {kind: metrics[f"{prefix}_{kind}"] for kind in VQA_KINDS
                                        if f"{prefix}_{kind}" in metrics})
                for name, metrics in results.items() if "vqa_acc_colour" in metrics
                for setting, prefix in settings.items()]
    text += table("VQA accuracy", [(kind, kind) for kind in VQA_KINDS], vqa_rows)
    object_rows = [(f"{name} {setting}", {kind: metrics[f"{prefix}_{kind}"] for kind in OBJECT_KINDS
                                           if f"{prefix}_{kind}" in metrics})
                   for name, metrics in results.items() if "vqa_acc_colour_first" in metrics
                   for setting, prefix in settings.items()]
    text += table("VQA, two objects", [(kind.replace("_", " "), kind) for kind in OBJECT_KINDS],
                  object_rows)
    naming = {"image": "binding_acc", "true description": "binding_text_acc",
              "no query image": "binding_blind_acc", "names shuffled": "binding_shuffled_acc"}
    naming_rows = [(f"{name} {setting}", {f"{n}-way {k}-shot": metrics[f"{prefix}_{n}way_{k}shot"]
                                          for n, k in NAMING})
                   for name, metrics in results.items() if "binding_acc_2way_1shot" in metrics
                   for setting, prefix in naming.items()]
    text += table("naming from context", [(f"{n}-way {k}-shot", f"{n}-way {k}-shot")
                                          for n, k in NAMING], naming_rows)
    return text.rstrip("\n")


# The columns of the ablation: (title, where in metrics.json). A key with * is the mean
# over the keys it matches (the zero-shot attributes, the VQA question kinds).
COMPARE_COLUMNS = [
    ("test i→t", "test", "image_to_text_R@1"),
    ("test t→i", "test", "text_to_image_R@1"),
    ("comp i→t", "compositional", "image_to_text_R@1"),
    ("comp t→i", "compositional", "text_to_image_R@1"),
    ("para i→t", "paraphrase", "image_to_text_R@1"),
    ("zero-shot", "test", "zeroshot_*_acc"),
    ("caption", "test", "caption_exact_match"),
    ("comp caption", "compositional", "caption_exact_match"),
    ("comp re-ranked", "compositional", "caption_exact_match_reranked"),
    ("VQA image", "test", "vqa_acc_*"),
    ("VQA own cap.", "test", "vqa_describe_acc_*"),
    ("VQA blind", "test", "vqa_blind_acc_*"),
]


def lookup(metrics, section, key):
    """metrics[section][key]; a key with * is the mean over the keys it matches, * standing for
    one word (so 'vqa_acc_*' is the question kinds, not their split by object, 'vqa_acc_colour_
    first'); a KeyError if none: a run without that head."""
    if "*" not in key:
        return metrics[section][key]
    pattern = re.compile(re.escape(key).replace(r"\*", "[a-z]+"))
    values = [value for name, value in metrics[section].items() if pattern.fullmatch(name)]
    if not values:
        raise KeyError(key)
    return sum(values) / len(values)


def read_metrics(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such metrics file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None


def flat(config, prefix=""):
    """{"align": {"steps": 300}} -> {"align.steps": 300}."""
    items = {}
    for key, value in config.items():
        items.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                     else {prefix + key: value})
    return items


def group_by_setting(runs):
    """[(path, metrics)] -> {label: [metrics of runs that differ only in seed]}. The label names
    what sets the group apart from the others: the settings (tower, objective, precision, any
    flag) that are not the same in every run, e.g. 'text_tower=random, precision=bfloat16'."""
    # a metrics file that records no configuration (written by evaluate alone, as in tutorial 8)
    # is named by its file
    settings = [{**flat(m["run"]["config"]), "precision": m["run"].get("precision")}
                if "config" in m.get("run", {}) else {"run": Path(path).stem} for path, m in runs]
    # Not settings: the seed (it draws the data), the device, and the file an LM was read from
    # (--lm): that LM's settings are recorded under lm.*, as for one pretrained in the run.
    not_settings = ("seed", "data_fingerprint", "device", "lm_checkpoint")
    varying = sorted({key for s in settings for key in s if key not in not_settings
                      and any(o.get(key) != s.get(key) for o in settings)})
    groups = {}
    for (path, metrics), s in zip(runs, settings):
        label = ", ".join(f"{key.split('.')[-1]}={s.get(key)}" for key in varying) or "runs"
        groups.setdefault(label, []).append(metrics)
    return groups


def merge_seeds(runs):
    """Several runs' metrics -> {split: {key: [one value per run]}} for the keys all of them have."""
    return {split: {key: [m[split][key] for m in runs] for key in runs[0][split]
                    if isinstance(runs[0][split][key], (int, float))
                    and all(isinstance(m.get(split, {}).get(key), (int, float)) for m in runs)}
            for split in runs[0] if split != "run" and all(split in m for m in runs)}


def compare(paths):
    """metrics.json files written by train.py -> one row per setting, the columns of the ablation.

    Runs that differ only in seed form one row: each cell is the mean (min–max) over them, and the
    row says which seeds. When every run is of one setting, the full tables follow, likewise."""
    runs = [(path, read_metrics(path)) for path in paths]
    rows = []
    for label, group in group_by_setting(runs).items():
        seeds = sorted(str(m.get("run", {}).get("config", {}).get("seed", "?")) for m in group)
        values = {}
        for title, section, key in COMPARE_COLUMNS:
            try:
                values[title] = [lookup(m, section, key) for m in group]
            except KeyError:  # a run without that head (e.g. --objective contrastive)
                pass
        rows.append((label + (f" (seeds {','.join(seeds)})" if "?" not in seeds else ""), values))
    columns = [(title, title) for title, _, _ in COMPARE_COLUMNS]
    saturated = [title for title, _ in columns if len(rows) > 1 and
                 all(title in values and min(values[title]) >= 0.99 for _, values in rows)]
    text = table("run", [c for c in columns if c[0] not in saturated], rows)
    if saturated:  # a column where every run is near perfect tells them apart in nothing
        text += f"left out, >= 0.99 for every run: {', '.join(saturated)}\n"
    if len(rows) == 1:
        text += "\n" + format_table(merge_seeds([m for _, m in runs]))
    return text.rstrip("\n")


# ------------------------------------------------------------------------------------------------
# Pictures, drawn with PIL: what a run did, to look at rather than read.
# ------------------------------------------------------------------------------------------------

INK, GREEN, RED, GREY = (20, 20, 20), (0, 140, 60), (200, 30, 30), (150, 150, 150)


def font(size=12):
    return ImageFont.load_default(size=size)


def enlarge(image, size=96):
    """(3, H, W) uint8 -> a PIL image of size x size, pixels kept sharp."""
    return Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size, size), Image.NEAREST)


def draw_retrieval(split, similarity, path, queries=6, top=3):
    """Query images, each with its top captions; the right caption in green, wrong ones in red."""
    queries, top = min(queries, len(split.images)), min(top, len(split.captions))
    canvas = Image.new("RGB", (560, 20 + 104 * queries), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), f"image-to-text retrieval: top {top} captions (green = the right caption)",
              fill=INK, font=font(13))
    for row in range(queries):
        y = 24 + 104 * row
        canvas.paste(enlarge(split.images[row]), (8, y))
        for rank, j in enumerate(similarity[row].topk(top).indices.tolist()):
            right = j == split.caption_index[row].item()
            draw.text((116, y + 8 + 28 * rank),
                      f"{rank + 1}. {split.captions[j]}  ({similarity[row, j]:.2f})",
                      fill=GREEN if right else RED, font=font(12))
    canvas.save(path)


def draw_similarity(similarity, path, n=24, cell=14):
    """The first n images against their own captions: cosine similarity as a grey-scale heat map,
    bright = similar. A good embedder lights up the diagonal."""
    images = list(range(n))
    margin = 60
    canvas = Image.new("RGB", (margin + n * cell + 90, margin + n * cell + 20), "white")
    draw = ImageDraw.Draw(canvas)
    block = similarity[:n][:, :n]
    low, high = block.min().item(), block.max().item()
    for i in images:
        for j in range(n):
            level = int(255 * (block[i, j].item() - low) / max(high - low, 1e-9))
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(level, level, level))
    draw.text((4, 6), "cosine similarity of image i and the caption of image j", fill=INK,
              font=font(12))
    draw.text((margin, 28), "columns: caption of image j", fill=INK, font=font(11))
    draw.text((4, margin - 30), "rows:", fill=INK, font=font(11))
    draw.text((4, margin - 18), "image i", fill=INK, font=font(11))
    for k in range(0, n, 4):
        draw.text((margin + k * cell + 2, margin - 14), str(k), fill=INK, font=font(10))
        draw.text((margin - 18, margin + k * cell), str(k), fill=INK, font=font(10))
    x = margin + n * cell + 16                                         # the colour scale
    for y in range(n * cell):
        level = int(255 * (1 - y / (n * cell)))
        draw.line([x, margin + y, x + 14, margin + y], fill=(level, level, level))
    draw.text((x + 18, margin - 2), f"{high:.2f}", fill=INK, font=font(10))
    draw.text((x + 18, margin + n * cell - 10), f"{low:.2f}", fill=INK, font=font(10))
    canvas.save(path)


def draw_curves(history, path):
    """Training curves, one panel each: LM loss, alignment loss, temperature, in-batch R@1."""
    panels = [("LM pretraining loss", history.get("lm", {}).get("loss", [])),
              ("alignment loss", history["align"]["loss"]),
              ("temperature (tau)", history["align"]["temperature"]),
              ("in-batch image-to-text R@1", history["align"].get("batch_R@1", []))]
    panels = [(title, points) for title, points in panels if points]
    width, height, pad = 300, 200, 44
    canvas = Image.new("RGB", (width * len(panels), height), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (title, points) in enumerate(panels):
        left, top, right, bottom = k * width + pad, 24, (k + 1) * width - 12, height - 30
        steps, values = [p[0] for p in points], [p[1] for p in points]
        low, high = min(values), max(values)
        high = high if high > low else low + 1
        draw.text((left, 4), title, fill=INK, font=font(12))
        draw.line([left, top, left, bottom, right, bottom], fill=INK)           # the axes
        draw.text((left - 40, top - 6), f"{high:.3g}", fill=INK, font=font(10))
        draw.text((left - 40, bottom - 6), f"{low:.3g}", fill=INK, font=font(10))
        draw.text((left, bottom + 4), "0", fill=INK, font=font(10))
        draw.text((right - 60, bottom + 4), f"step {max(steps)}", fill=INK, font=font(10))
        xy = [(left + (right - left) * s / max(max(steps), 1),
               bottom - (bottom - top) * (v - low) / (high - low)) for s, v in points]
        draw.line(xy, fill=RED if "loss" in title else GREEN, width=2)
    canvas.save(path)


def draw_captions(split, generated, answers, path, count=6):
    """Sample images with the caption the frozen LM wrote for each (green: right, red: wrong),
    and one question answered after that caption (answers: None for your own data)."""
    canvas = Image.new("RGB", (8 + 184 * count, 196), "white")
    draw = ImageDraw.Draw(canvas)
    for k in range(count):
        x = 8 + 184 * k
        canvas.paste(enlarge(split.images[k], 120), (x + 24, 6))
        text = generated[k]
        if split.scenes is None:  # your own data: right when it is the image's own caption
            right = text.lower().split() == split.captions[split.caption_index[k]].lower().split()
        else:
            right = parse_caption(text) == split.scenes[k]
        lines = [(words, GREEN if right else RED) for words in textwrap.wrap(text, 30)[:2]]
        if answers:
            question, truth, given = answers[k]
            right = verdict(given) == verdict(truth)
            lines += [(f"q: {question}", INK), (f"a: {given}", GREEN if right else RED)]
        for line, (words, colour) in enumerate(lines):
            draw.text((x, 132 + 15 * line), words, fill=colour, font=font(11))
    canvas.save(path)


@torch.no_grad()
def draw_pictures(embedder, tower, split, history, objective, device, out, precision="auto"):
    """Write the run's pictures into `out`: curves.png; with a contrastive head retrieval.png and
    similarity.png; with a prefix head captions.png, whose questions are answered after the LM's
    own caption."""
    image_emb, prefixes = embed_images(embedder, split.images, device, precision=precision)
    paths = [out / "curves.png"]
    draw_curves(history, paths[0])
    if objective != "prefix":
        text_emb = tower(split.captions)
        similarity = (image_emb @ F.normalize(text_emb, dim=1).T).cpu()  # (N, M)
        paths += [out / "retrieval.png", out / "similarity.png"]
        draw_retrieval(split, similarity, paths[-2])
        n = min(24, len(split.images))
        draw_similarity(similarity[:n, split.caption_index[:n]], paths[-1], n)  # image i, caption of j
    if objective != "contrastive":
        lm, tokenizer = tower.lm, tower.tokenizer
        generated = describe(lm, tokenizer, prefixes[:6])
        paths.append(out / "captions.png")
        if split.scenes is None:  # your own data: no scene to ask questions about
            draw_captions(split, generated, None, paths[-1], count=min(6, len(split.images)))
            return paths
        rng = np.random.default_rng(0)
        asked = []
        for scene in split.scenes[:6]:  # a colour question where there is one
            pairs = [(q, a) for q, a, kind in questions(scene, rng) if kind == "colour"]
            asked.append(pairs[0] if pairs else questions(scene, rng)[0][:2])
        room = lm.context - 1 - prefixes.shape[1] - max(query_length(tokenizer, q, a)
                                                        for q, a in asked)
        contexts = own_caption_context(lm, tokenizer, generated, room)
        given = answer(lm, tokenizer, contexts, [q for q, _ in asked])
        draw_captions(split, generated, [(q, a, g) for (q, a), g in zip(asked, given)], paths[-1])
    return paths


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------

def separator(text):
    """--csv-separator: one character; 'tab' or '\\t' for a tab, awkward to type in a shell."""
    text = "\t" if text in ("tab", "\\t") else text
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"expected one character (or 'tab'), got {text!r}")
    return text


def add_data_flags(parser):
    """The flags that read your own image-caption pairs (open_clip's names and defaults)."""
    group = parser.add_argument_group("your own data")
    group.add_argument("--data", help="a CSV/TSV file with a header and one image-caption pair a "
                                      "row; image paths are relative to the file")
    group.add_argument("--csv-separator", type=separator, default="\t",
                       help="column separator: one character, or 'tab' (default: tab)")
    group.add_argument("--csv-img-key", default="filepath",
                       help="the column of image paths (default: %(default)s)")
    group.add_argument("--csv-caption-key", default="title",
                       help="the column of captions (default: %(default)s)")
    return group


def read_table(args, path):
    return read_pairs(path, args.csv_separator, args.csv_img_key, args.csv_caption_key)


def load_lm(checkpoint, device):
    """Rebuild (tokenizer, frozen LM, LM config) from a checkpoint's plain data."""
    lm_cfg = LMConfig(**checkpoint["config"]["lm"])
    lm = LanguageModel(lm_cfg)
    lm.load_state_dict(checkpoint["lm"])
    return Tokenizer.from_dict(checkpoint["tokenizer"]), freeze(lm.to(device)), lm_cfg


def load_models(checkpoint, device):
    """Rebuild the frozen text tower and the visual embedder from a checkpoint's plain data."""
    config = checkpoint["config"]
    tokenizer, lm, lm_cfg = load_lm(checkpoint, device)
    world_cfg = WorldConfig(**config["world"])
    tower = TextTower(lm, tokenizer, checkpoint["whitening_mean"], checkpoint["whitening_matrix"],
                      device)
    embedder = VisualEmbedder(world_cfg.image_size, lm_cfg.width, config["align"]["prefix_tokens"])
    embedder.load_state_dict(checkpoint["embedder"])
    return tower, embedder.to(device).eval(), world_cfg, config


def name_by_example(lm, tokenizer, embedder, image_size, device, arguments, precision="auto"):
    """--name IMAGE:NAME ... QUERY: the naming prompt of naming_metrics built from these files ->
    the prompt as the LM reads it (each image as the words its three vectors are nearest to),
    then the name the LM gives the last image."""
    *support, query = arguments
    examples = [path.rsplit(":", 1) for path in support]
    if not examples or any(len(pair) != 2 or not re.fullmatch(r"[a-z]+", pair[1])
                           for pair in examples):
        raise ValueError("--name: expected IMAGE:NAME ... then the image to name, each NAME a "
                         f"lower-case word (got {' '.join(arguments)})")
    if naming_positions(tokenizer, embedder.prefix_shape[0]) is None:
        raise ValueError("--name: this checkpoint's tokenizer splits the shapes world's words, or "
                         "its prefix is shorter than 4, so it has no three vectors to name by")
    images = torch.stack([load_image(path, image_size) for path, _ in examples] +
                         [load_image(query, image_size)])
    _, prefixes = embed_images(embedder, images, device, precision=precision)
    vectors = naming_vectors(lm, tokenizer, prefixes)                               # (M, 3, C)
    row = naming_row(lm, tokenizer, vectors[:-1], [name for _, name in examples], vectors[-1])
    prompt = tokenizer.encode(" is a")
    if len(row) + len(prompt) >= lm.context:
        raise ValueError(f"--name: {len(examples)} examples make a prompt of {len(row) + len(prompt)}"
                         f" positions; the LM reads {lm.context}, so give fewer")
    seen = [f"[image: {tokenizer.decode(ids.tolist())}]" for ids in nearest_tokens(lm, vectors)]
    lines = [f"{image} is a {name}" for image, (_, name) in zip(seen, examples)]
    said = continue_lines(lm, tokenizer, [row], [prompt], 8)[0]
    return "\n".join(lines + [f"{seen[-1]} is a ... {said}"])


def build_parser():
    parser = Parser(prog="eval.py", description=__doc__)
    parser.add_argument("--ckpt", help="the minivlp.pt that train.py wrote: needed by everything "
                                       "but --compare")
    parser.add_argument("--compare", nargs="+", metavar="METRICS_JSON",
                        help="print runs side by side from their metrics.json files (no "
                             "checkpoint needed); runs that differ only in seed make one row, "
                             "mean (min–max)")
    parser.add_argument("--json", help="where to write the metrics (default: none)")
    parser.add_argument("--caption", metavar="IMAGE", help="print a caption for this image file")
    parser.add_argument("--ask", nargs=2, metavar=("IMAGE", "QUESTION"),
                        help='describe an image, then answer a question about it, e.g. "what '
                             'colour is the circle?" (prints the caption, then the answer; '
                             'both greedy)')
    parser.add_argument("--name", nargs="+", metavar="IMAGE[:NAME]",
                        help="few-shot naming: images each with a made-up name, then an image to "
                             "name, e.g. --name a.png:dax b.png:kep c.png (prints the prompt as "
                             "the LM reads it, then the name it gives; shapes world)")
    parser.add_argument("--sample-temperature", type=float, default=0.0,
                        help="--caption only: 0 decodes greedily, above 0 samples, more varied "
                             "the higher (default: %(default)s)")
    parser.add_argument("--rerank", type=int, default=RERANK_SAMPLES, metavar="SAMPLES",
                        help="also score the caption the image's vector v picks among the greedy "
                             "one and SAMPLES sampled ones (caption_exact_match_reranked); both "
                             "heads only; 0: off (default: %(default)s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the models run; auto picks CUDA when present "
                             "(default: %(default)s)")
    parser.add_argument("--precision", choices=["auto", *PRECISIONS], default="auto",
                        help="what the embedder computes in (as train.py; default: auto)")
    data = add_data_flags(parser)
    data.add_argument("--classes", type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
                      help="with --data: zero-shot classes, comma-separated (an image's class is "
                           "the one its caption names), e.g. 'zero,one,two'")
    data.add_argument("--templates", nargs="+", default=["{}"],
                      help="prompts for --classes, {} is the class name (default: '{}')")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.classes and not args.data:
        parser.error("--classes needs --data (the built-in world has its own zero-shot classes)")
    for template in args.templates:
        if "{}" not in template:
            parser.error(f"--templates: {template!r} has no {{}} for the class name")
    if args.rerank < 0:
        parser.error(f"--rerank {args.rerank}: expected a number of samples, 0 or more")
    if args.compare:
        print(compare(args.compare))
        return
    if not args.ckpt:
        parser.error("give --ckpt CHECKPOINT (or --compare METRICS_JSON ...)")
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.ckpt)
    if "embedder" not in checkpoint:
        raise ValueError(f"{args.ckpt}: holds only the LM stage (train.py --stage all writes "
                         "minivlp.pt)")
    try:
        tower, embedder, world_cfg, config = load_models(checkpoint, device)
    except (KeyError, TypeError, RuntimeError) as error:  # missing keys, other shapes
        raise ValueError(f"{args.ckpt}: a checkpoint this eval.py cannot rebuild "
                         f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
    objective = config["objective"]
    if (args.caption or args.ask or args.name) and objective == "contrastive":
        raise ValueError(f"{args.ckpt}: trained with --objective contrastive, so it has no "
                         f"prefix to caption or answer with (train with prefix or both)")
    lm, tokenizer = tower.lm, tower.tokenizer
    if args.caption:
        _, prefix = embed_images(embedder, load_image(args.caption, world_cfg.image_size)[None],
                                 device, precision=args.precision)
        print(describe(lm, tokenizer, prefix, args.sample_temperature)[0])
        return
    if args.ask:
        _, prefix = embed_images(embedder, load_image(args.ask[0], world_cfg.image_size)[None],
                                 device, precision=args.precision)
        # Describe, then answer: the setting that answers best (tutorials/results.md). Half the
        # context is left for the question and answer.
        said = describe(lm, tokenizer, prefix)
        context_emb = own_caption_context(lm, tokenizer, said, lm.context // 2)[0]  # (P, C)
        print(said[0])
        print(answer(lm, tokenizer, [context_emb], [args.ask[1].strip().lower()])[0])
        return
    if args.name:
        print(name_by_example(lm, tokenizer, embedder, world_cfg.image_size, device, args.name,
                              args.precision))
        return
    if config.get("data") and not args.data:
        raise ValueError(f"{args.ckpt}: trained on {config['data']}, not on a built-in world: "
                         f"give --data PAIRS to evaluate it on")
    if args.data:  # your own pairs: retrieval, captioning, zero-shot over --classes
        splits = {Path(args.data).stem: pairs_split(args.data, read_table(args, args.data),
                                                    world_cfg.image_size)}
        results = evaluate(embedder, tower, splits, None, device, objective, args.classes,
                           args.templates, args.precision)
    else:
        support = make_support_split(world_cfg, config["seed"])
        results = evaluate(embedder, tower, make_eval_splits(world_cfg, config["seed"]), support,
                           device, objective, precision=args.precision, rerank=args.rerank,
                           chain=chained_corpus(config["lm"].get("reading_steps", 0),
                                                world_cfg.dataset, config.get("text")))
    print(format_table(results))
    if args.json:
        where = environment(device, args.precision)
        save_json({**results, "run": {"config": config, "environment": where,
                                      "precision": where["precision"]}}, args.json)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        sys.exit(2)
