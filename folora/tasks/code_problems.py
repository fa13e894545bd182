"""Generated Python function-synthesis problems: a signature and a docstring in, the function's body out.

Each problem chains one to three operations from a catalogue of operations on lists of integers, strings, lists
of words and word-count dicts (the output type of one is the input type of the next). The reference solution is
one statement per operation; the tests are four generated inputs with the outputs of the reference. Before a
problem is emitted, the generator executes its reference against its tests, and drops problems whose tests could
not tell a wrong function from the right one (every expected output equal). The split is fixed by a hash of the
problem's operation chain, so a chain seen in training never appears in validation or test.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from folora.tasks.splits import check_split_name, split_of

TYPES = {"ints": "list[int]", "text": "str", "words": "list[str]", "counts": "dict[str, int]", "int": "int"}
NOUNS = {"ints": "the list of integers", "text": "the string", "words": "the list of words",
         "counts": "the dictionary of word counts", "int": "the number"}
WORDS = ("apple banana cherry delta echo fig grape house ice jam kite lemon mango night ocean pear quiet river "
         "stone tiger umbrella violet water xray yellow zebra Alpha Bravo").split()


@dataclass(frozen=True)
class Op:
    name: str    # identifier piece for the function name
    phrase: str  # what it does, in the docstring; may contain {k}
    takes: str
    gives: str
    code: str    # one or more statements that transform `result`; may contain {k}
    k: tuple[int, int] | None = None  # range of the integer parameter, if any


CATALOGUE = [
    Op("sorted", "sort it in ascending order", "ints", "ints", "result = sorted(result)"),
    Op("sorted_desc", "sort it in descending order", "ints", "ints", "result = sorted(result, reverse=True)"),
    Op("reversed", "reverse its order", "ints", "ints", "result = result[::-1]"),
    Op("evens", "keep only the even numbers", "ints", "ints", "result = [x for x in result if x % 2 == 0]"),
    Op("odds", "keep only the odd numbers", "ints", "ints", "result = [x for x in result if x % 2 != 0]"),
    Op("positives", "keep only the numbers greater than zero", "ints", "ints", "result = [x for x in result if x > 0]"),
    Op("squared", "square every number", "ints", "ints", "result = [x * x for x in result]"),
    Op("plus_k", "add {k} to every number", "ints", "ints", "result = [x + {k} for x in result]", (1, 9)),
    Op("times_k", "multiply every number by {k}", "ints", "ints", "result = [x * {k} for x in result]", (2, 5)),
    Op("absolute", "replace every number by its absolute value", "ints", "ints", "result = [abs(x) for x in result]"),
    Op("unique", "remove repeated numbers, keeping the first occurrence of each", "ints", "ints",
       "result = list(dict.fromkeys(result))"),
    Op("running_total", "replace it by its running totals (the i-th item is the sum of the first i+1 numbers)",
       "ints", "ints", "total, totals = 0, []\nfor x in result:\n    total += x\n    totals.append(total)\nresult = totals"),
    Op("first_k", "keep only its first {k} numbers", "ints", "ints", "result = result[:{k}]", (1, 4)),
    Op("drop_k", "drop its first {k} numbers", "ints", "ints", "result = result[{k}:]", (1, 3)),
    Op("sum", "return the sum of the numbers", "ints", "int", "result = sum(result)"),
    Op("max", "return the largest number (0 if there is none)", "ints", "int", "result = max(result, default=0)"),
    Op("min", "return the smallest number (0 if there is none)", "ints", "int", "result = min(result, default=0)"),
    Op("count", "return how many numbers there are", "ints", "int", "result = len(result)"),
    Op("count_above_k", "return how many numbers are greater than {k}", "ints", "int",
       "result = sum(1 for x in result if x > {k})", (0, 5)),
    Op("sum_squares", "return the sum of the squares of the numbers", "ints", "int", "result = sum(x * x for x in result)"),
    Op("upper", "convert it to upper case", "text", "text", "result = result.upper()"),
    Op("lower", "convert it to lower case", "text", "text", "result = result.lower()"),
    Op("reversed_text", "reverse it character by character", "text", "text", "result = result[::-1]"),
    Op("no_vowels", "remove every vowel (a, e, i, o, u, in either case)", "text", "text",
       "result = ''.join(c for c in result if c.lower() not in 'aeiou')"),
    Op("capitalized", "capitalize the first letter of every word and lower-case the rest", "text", "text",
       "result = ' '.join(w.capitalize() for w in result.split())"),
    Op("underscored", "replace every space by an underscore", "text", "text", "result = result.replace(' ', '_')"),
    Op("swapped_case", "swap the case of every letter", "text", "text", "result = result.swapcase()"),
    Op("count_vowels", "return the number of vowels (a, e, i, o, u, in either case)", "text", "int",
       "result = sum(1 for c in result if c.lower() in 'aeiou')"),
    Op("count_words", "return the number of space-separated words", "text", "int", "result = len(result.split())"),
    Op("length", "return its number of characters", "text", "int", "result = len(result)"),
    Op("words", "split it into its space-separated words", "text", "words", "result = result.split()"),
    Op("alphabetical", "sort the words alphabetically (case-sensitive, as Python sorts strings)", "words", "words",
       "result = sorted(result)"),
    Op("longer_than_k", "keep only the words longer than {k} letters", "words", "words",
       "result = [w for w in result if len(w) > {k}]", (3, 5)),
    Op("upper_words", "convert every word to upper case", "words", "words", "result = [w.upper() for w in result]"),
    Op("reversed_words", "reverse the order of the words", "words", "words", "result = result[::-1]"),
    Op("unique_words", "remove repeated words, keeping the first occurrence of each", "words", "words",
       "result = list(dict.fromkeys(result))"),
    Op("joined", "join the words with single spaces into one string", "words", "text", "result = ' '.join(result)"),
    Op("comma_joined", "join the words with ', ' into one string", "words", "text", "result = ', '.join(result)"),
    Op("initials", "return the first letters of the words, concatenated", "words", "text",
       "result = ''.join(w[0] for w in result if w)"),
    Op("longest", "return the longest word (the first one on ties, '' if there is none)", "words", "text",
       "result = max(result, key=len, default='')"),
    Op("word_count", "return how many words there are", "words", "int", "result = len(result)"),
    Op("letters", "return the total number of letters in all the words", "words", "int",
       "result = sum(len(w) for w in result)"),
    Op("lengths", "map every word to its length in a dictionary", "words", "counts", "result = {w: len(w) for w in result}"),
    Op("frequencies", "count how many times each word occurs, in a dictionary", "words", "counts",
       "counts = {}\nfor w in result:\n    counts[w] = counts.get(w, 0) + 1\nresult = counts"),
    Op("keys_sorted", "return its keys sorted alphabetically", "counts", "words", "result = sorted(result)"),
    Op("keys_above_k", "return, sorted alphabetically, the keys whose value is greater than {k}", "counts", "words",
       "result = sorted(w for w, n in result.items() if n > {k})", (1, 4)),
    Op("keys_by_value", "return its keys ordered by value, largest first, ties broken alphabetically", "counts", "words",
       "result = sorted(result, key=lambda w: (-result[w], w))"),
    Op("total", "return the sum of its values", "counts", "int", "result = sum(result.values())"),
    Op("largest_value", "return its largest value (0 if it is empty)", "counts", "int",
       "result = max(result.values(), default=0)"),
    Op("above_k", "keep only the entries whose value is greater than {k}", "counts", "counts",
       "result = {w: n for w, n in result.items() if n > {k}}", (1, 4)),
    Op("doubled", "double every value", "counts", "counts", "result = {w: 2 * n for w, n in result.items()}"),
]
PARAMETER_NAMES = {"ints": "values", "text": "text", "words": "words", "counts": "counts"}


@dataclass
class CodeProblem:
    name: str
    prompt: str       # signature + docstring: what the model completes
    solution: str     # the whole function
    body: str
    tests: str        # `def check(candidate): ...`
    chain: str

    def to_record(self) -> dict:
        return {"task_id": f"folora/{self.name}", "prompt": self.prompt, "solution": self.solution,
                "canonical_solution": self.body, "test": self.tests, "entry_point": self.name, "chain": self.chain,
                "instruction": instruction(self.prompt), "response": self.body}


def instruction(prompt: str) -> str:
    """The chat request: the function's signature and docstring; the answer is its body (as HumanEval's)."""
    return f"Write the body of this Python function: only the indented code that follows the docstring.\n\n{prompt}"


def random_input(kind: str, rng: random.Random):
    if kind == "ints":
        return [rng.randint(-9, 20) for _ in range(rng.randint(0, 8))]
    if kind == "words":
        return [rng.choice(WORDS) for _ in range(rng.randint(0, 7))]
    if kind == "text":
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    if kind == "counts":
        return {w: rng.randint(0, 6) for w in rng.sample(WORDS, rng.randint(0, 5))}
    raise ValueError(kind)


def _chain(rng: random.Random) -> list[tuple[Op, int | None]]:
    start = rng.choice(sorted(PARAMETER_NAMES))
    chain, kind = [], start
    for _ in range(rng.randint(1, 3)):
        options = [op for op in CATALOGUE if op.takes == kind and op.name not in {o.name for o, _ in chain}]
        if not options or kind == "int":
            break
        op = rng.choice(options)
        chain.append((op, rng.randint(*op.k) if op.k else None))
        kind = op.gives
    return chain


def build(chain: list[tuple[Op, int | None]], rng: random.Random) -> CodeProblem | None:
    first, last = chain[0][0], chain[-1][0]
    param = PARAMETER_NAMES[first.takes]
    # prefixed with the parameter's name, so no function is called like a builtin its body uses (min, sorted, ...)
    name = "_".join([param] + [op.name.replace("_k", f"_{k}") if k is not None else op.name for op, k in chain])
    name = name.translate(str.maketrans("", "", string.punctuation.replace("_", "")))
    steps = [op.phrase.replace("{k}", str(k)) for op, k in chain]
    returns = "" if steps[-1].startswith("return") else ", and return the result"
    description = f"Given {NOUNS[first.takes]} `{param}`, " + ", then ".join(steps) + returns + "."
    lines = [f"result = {param}"] + [op.code.replace("{k}", str(k)) for op, k in chain] + ["return result"]
    body = "".join("    " + line + "\n" for statement in lines for line in statement.split("\n"))
    inputs = [random_input(first.takes, rng) for _ in range(4)]
    function = _compile(name, param, body)
    outputs = [function(value) for value in inputs]
    if len({repr(o) for o in outputs}) < 2:
        return None  # tests that every constant function passes are no tests
    example = f"    >>> {name}({inputs[0]!r})\n    {outputs[0]!r}\n"
    signature = f"def {name}({param}: {TYPES[first.takes]}) -> {TYPES[last.gives]}:\n"
    prompt = signature + f'    """{_wrap(description)}\n\n{example}    """\n'
    tests = "def check(candidate):\n" + "".join(f"    assert candidate({i!r}) == {o!r}\n" for i, o in zip(inputs, outputs,
                                                                                                          strict=True))
    chain_key = " > ".join(op.name if k is None else f"{op.name}(k={k})" for op, k in chain)
    problem = CodeProblem(name, prompt, prompt + body, body, tests, chain_key)
    _verify(problem)
    return problem


def _wrap(text: str, width: int = 88) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n    ".join(lines + [line])


def _compile(name: str, param: str, body: str):
    namespace: dict = {}
    exec(f"def {name}({param}):\n{body}", namespace)  # our own reference code, not model output
    return namespace[name]


def _verify(problem: CodeProblem) -> None:
    """Run the emitted solution against the emitted tests, as the evaluator will."""
    namespace: dict = {}
    exec(problem.solution + "\n" + problem.tests, namespace)
    namespace["check"](namespace[problem.name])


def generate(split: str, size: int, seed: int = 0) -> list[dict]:
    """`size` distinct problems of `split`, deterministic in (split, size, seed)."""
    check_split_name(split)
    rng = random.Random(f"folora-code-{seed}")
    records, seen = [], set()
    for _ in range(200 * size + 1000):
        if len(records) == size:
            return records
        chain = _chain(rng)
        key = "|".join(f"{op.name}:{k}" for op, k in chain)
        if not chain or key in seen or split_of(key) != split:
            continue
        problem = build(chain, random.Random(f"{seed}-{key}"))
        if problem is not None:
            seen.add(key)
            records.append(problem.to_record())
    raise ValueError(f"the code generator has only {len(records)} distinct {split} problems; ask for at most that many")
