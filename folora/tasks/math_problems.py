"""A deterministic generator of GSM8K-style arithmetic word problems with step-by-step solutions.

Each problem comes from a story family (shopping, savings, sharing, travel, fractions of a group, ages,
production, recipes, comparisons, ...) filled with names, objects, units and numbers drawn from a seeded RNG.
Every problem carries its `program`: the sequence of arithmetic steps, each an expression over literals and
earlier results (`r0`, `r1`, ...). The solution text is rendered from the program, one step per line, and ends
with `#### <answer>` as GSM8K does. Answers are integers by construction (divisions are exact).

Splits are disjoint by construction: a problem's split is a function of a hash of its question text, so the
same question can never appear in two splits (and `check_disjoint` verifies it on the generated data).
"""

from __future__ import annotations

import ast
import operator
import random
from dataclasses import dataclass, field

from folora.tasks.splits import check_split_name, split_of

NAMES = (
    "Aisha", "Ben", "Carlos", "Dana", "Elif", "Farah", "Gustavo", "Hana", "Ivan", "Jamal", "Keiko", "Liam",
    "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wei", "Ximena",
    "Yusuf", "Zoe", "Mateo", "Ingrid", "Kofi", "Lucia", "Nadia", "Oscar", "Pedro", "Sofia", "Tomas", "Amara",
)
ITEMS = (  # (singular, plural, price range in dollars)
    ("notebook", "notebooks", (2, 9)), ("pencil", "pencils", (1, 3)), ("apple", "apples", (1, 2)),
    ("book", "books", (6, 25)), ("shirt", "shirts", (8, 30)), ("toy car", "toy cars", (3, 15)),
    ("cupcake", "cupcakes", (2, 5)), ("plant", "plants", (4, 18)), ("ticket", "tickets", (5, 20)),
    ("bottle of juice", "bottles of juice", (2, 6)), ("puzzle", "puzzles", (7, 22)), ("candle", "candles", (2, 8)),
)
CONTAINERS = (  # (container plural, content plural)
    ("boxes", "crayons"), ("bags", "marbles"), ("crates", "oranges"), ("packs", "stickers"),
    ("baskets", "eggs"), ("jars", "cookies"), ("trays", "muffins"), ("cartons", "bottles"),
)
GROUPS = (("class", "students"), ("club", "members"), ("team", "players"), ("choir", "singers"), ("office", "workers"))
VEHICLES = (("drives", "car"), ("cycles", "bike"), ("rides", "train"), ("sails", "boat"))
PRODUCTS = (("bakery", "loaves of bread"), ("factory", "chairs"), ("workshop", "bracelets"), ("farm", "jars of honey"),
            ("printer", "posters"), ("kitchen", "sandwiches"))
INGREDIENTS = (("flour", "grams"), ("sugar", "grams"), ("milk", "milliliters"), ("rice", "grams"), ("water", "milliliters"))

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
_SYMBOL = {"+": "+", "-": "-", "*": "*", "//": "/"}


@dataclass
class Step:
    """One line of the solution: `text` with `{calc}` where `expr = value` is written."""

    text: str
    expr: str  # over literals and earlier results r0, r1, ...


@dataclass
class Problem:
    family: str
    question: str
    steps: list[Step] = field(default_factory=list)

    @property
    def program(self) -> list[str]:
        return [step.expr for step in self.steps]

    @property
    def answer(self) -> int:
        return run_program(self.program)[-1]

    @property
    def solution(self) -> str:
        values = run_program(self.program)
        lines = []
        for index, step in enumerate(self.steps):
            shown = render_expr(step.expr, values[:index])
            lines.append(step.text.format(calc=f"{shown} = {values[index]}", value=values[index]))
        lines.append(f"#### {values[-1]}")
        return "\n".join(lines)

    def to_record(self) -> dict:
        return {"family": self.family, "question": self.question, "answer": self.solution,
                "final": self.answer, "program": self.program}


def run_program(program: list[str]) -> list[int]:
    """Evaluate each step's expression (literals, + - * //, and earlier results r0, r1, ...) exactly."""
    values: list[int] = []
    for expr in program:
        values.append(_eval(ast.parse(expr, mode="eval").body, values))
    return values


def _eval(node, values: list[int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id.startswith("r"):
        return values[int(node.id[1:])]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left, values), _eval(node.right, values)
        if isinstance(node.op, ast.FloorDiv) and left % right:
            raise ValueError(f"inexact division {left} / {right}")
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"unsupported expression node {ast.dump(node)}")


def render_expr(expr: str, values: list[int]) -> str:
    """Write an expression with earlier results substituted, `//` shown as `/`."""
    for index in range(len(values) - 1, -1, -1):
        expr = expr.replace(f"r{index}", str(values[index]))
    for symbol, shown in _SYMBOL.items():
        expr = expr.replace(f" {symbol} ", f" {shown} ")
    return expr


# --- story families --------------------------------------------------------------------------------------------
# Each takes an RNG and returns a Problem whose numbers keep every intermediate result a positive integer.


def _shopping(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    (s1, p1, r1), (s2, p2, r2) = rng.sample(ITEMS, 2)
    n1, n2 = rng.randint(2, 9), rng.randint(2, 7)
    c1, c2 = rng.randint(*r1), rng.randint(*r2)
    total = n1 * c1 + n2 * c2
    bill = next(b for b in (20, 50, 100, 200, 500) if b >= total + 1)
    question = rng.choice([
        f"{name} buys {n1} {p1} for ${c1} each and {n2} {p2} for ${c2} each. {name} pays with a ${bill} bill. "
        f"How much change does {name} get?",
        f"At the market, {p1} cost ${c1} each and {p2} cost ${c2} each. {name} gets {n1} {p1} and {n2} {p2} "
        f"and hands over ${bill}. How many dollars should {name} get back?",
    ])
    return Problem("shopping", question, [
        Step(f"The {p1} cost {{calc}} dollars.", f"{n1} * {c1}"),
        Step(f"The {p2} cost {{calc}} dollars.", f"{n2} * {c2}"),
        Step("Together they cost {calc} dollars.", "r0 + r1"),
        Step("The change is {calc} dollars.", f"{bill} - r2"),
    ])


def _savings(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    weekly, weeks = rng.randint(3, 25), rng.randint(3, 12)
    spent = rng.randint(1, weekly * weeks - 1)
    gift = rng.randint(5, 60)
    question = rng.choice([
        f"{name} saves ${weekly} every week for {weeks} weeks. Then {name} spends ${spent} on a game and gets "
        f"${gift} as a birthday gift. How much money does {name} have now?",
        f"Each week {name} puts ${weekly} into a piggy bank. After {weeks} weeks, {name} takes out ${spent} for "
        f"a trip, and later a grandparent adds ${gift}. How many dollars are in the piggy bank?",
    ])
    return Problem("savings", question, [
        Step("After saving, there are {calc} dollars.", f"{weekly} * {weeks}"),
        Step("After spending, {calc} dollars are left.", f"r0 - {spent}"),
        Step("With the gift, there are {calc} dollars.", f"r1 + {gift}"),
    ])


def _sharing(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    container, content = rng.choice(CONTAINERS)
    boxes, per_box = rng.randint(2, 9), rng.randint(3, 30)
    total = boxes * per_box
    friends = rng.randint(2, min(8, total // 3))
    # keep the remainder plus a few whole rounds, so the rest divides exactly and each friend gets at least 2
    kept = total % friends + friends * rng.randint(1, max(1, (total // friends - 2) // 2))
    question = rng.choice([
        f"{name} has {boxes} {container} with {per_box} {content} in each. {name} keeps {kept} {content} and "
        f"shares the rest equally among {friends} friends. How many {content} does each friend get?",
        f"There are {boxes} {container}, each holding {per_box} {content}. After putting {kept} {content} aside, "
        f"{name} splits the others evenly between {friends} friends. How many {content} does each friend receive?",
    ])
    return Problem("sharing", question, [
        Step(f"There are {{calc}} {content} in total.", f"{boxes} * {per_box}"),
        Step(f"After keeping some, {{calc}} {content} are shared.", f"r0 - {kept}"),
        Step(f"Each friend gets {{calc}} {content}.", f"r1 // {friends}"),
    ])


def _travel(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    verb, vehicle = rng.choice(VEHICLES)
    v1, h1 = rng.randint(4, 90), rng.randint(2, 6)
    v2, h2 = rng.randint(4, 90), rng.randint(1, 5)
    unit = rng.choice(["kilometers", "miles"])
    short = "km" if unit == "kilometers" else "miles"
    question = rng.choice([
        f"{name} {verb} at {v1} {unit} per hour for {h1} hours, then at {v2} {unit} per hour for {h2} hours. "
        f"How many {unit} does {name} travel in total?",
        f"{_article(vehicle).capitalize()} {vehicle} goes {v1} {unit} each hour for {h1} hours and afterwards {v2} {unit} each hour for {h2} more "
        f"hours. What distance in {unit} does the {vehicle} cover?",
    ])
    return Problem("travel", question, [
        Step(f"The first part is {{calc}} {short}.", f"{v1} * {h1}"),
        Step(f"The second part is {{calc}} {short}.", f"{v2} * {h2}"),
        Step(f"The total distance is {{calc}} {short}.", "r0 + r1"),
    ])


def _fractions(rng: random.Random) -> Problem:
    group, people = rng.choice(GROUPS)
    denom = rng.choice([2, 3, 4, 5])
    rest_denom = rng.choice([2, 3, 4])
    total = denom * rest_denom * rng.randint(2, 8)
    activity, other = rng.choice([("play chess", "paint"), ("like tea", "like coffee"), ("walk to school", "take the bus"),
                                  ("speak French", "speak Spanish")])
    question = (f"{_article(group).capitalize()} {group} has {total} {people}. One {_ordinal(denom)} of them {activity}. Of the remaining {people}, "
                f"one {_ordinal(rest_denom)} {other}. How many {people} do neither?")
    return Problem("fractions", question, [
        Step(f"{{calc}} {people} {activity}.", f"{total} // {denom}"),
        Step(f"{{calc}} {people} remain.", f"{total} - r0"),
        Step(f"{{calc}} of them {other}.", f"r1 // {rest_denom}"),
        Step(f"So {{calc}} {people} do neither.", "r1 - r2"),
    ])


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _ordinal(n: int) -> str:
    return {2: "half", 3: "third", 4: "fourth", 5: "fifth"}[n]


def _ages(rng: random.Random) -> Problem:
    a, b, c = rng.sample(NAMES, 3)
    c_age = rng.randint(2, 12)
    times = rng.randint(2, 4)
    older = rng.randint(1, 15)
    question = rng.choice([
        f"{c} is {c_age} years old. {b} is {times} times as old as {c}, and {a} is {older} years older than {b}. "
        f"What is the sum of their three ages?",
        f"{b}'s age is {times} times {c}'s age, and {a} is {older} years older than {b}. If {c} is {c_age}, "
        f"how old are {a}, {b} and {c} altogether?",
    ])
    return Problem("ages", question, [
        Step(f"{b} is {{calc}} years old.", f"{times} * {c_age}"),
        Step(f"{a} is {{calc}} years old.", f"r0 + {older}"),
        Step("Together they are {calc} years old.", f"{c_age} + r0 + r1"),
    ])


def _production(rng: random.Random) -> Problem:
    place, goods = rng.choice(PRODUCTS)
    per_hour, hours, days = rng.randint(3, 40), rng.randint(2, 10), rng.randint(2, 7)
    made = per_hour * hours * days
    shipped = rng.randint(1, made - 1)
    question = rng.choice([
        f"{_article(place).capitalize()} {place} makes {per_hour} {goods} per hour and works {hours} hours a day. After {days} days it has sent "
        f"{shipped} {goods} to shops. How many {goods} are left?",
        f"Every hour, {_article(place)} {place} produces {per_hour} {goods}. It runs {hours} hours each day for {days} days and "
        f"then delivers {shipped} {goods}. How many {goods} does it still have?",
    ])
    return Problem("production", question, [
        Step(f"Each day it makes {{calc}} {goods}.", f"{per_hour} * {hours}"),
        Step(f"In {days} days it makes {{calc}} {goods}.", f"r0 * {days}"),
        Step(f"After delivering, {{calc}} {goods} are left.", f"r1 - {shipped}"),
    ])


def _recipe(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    ingredient, unit = rng.choice(INGREDIENTS)
    per_batch, batches = rng.randint(2, 9) * 25, rng.randint(2, 8)
    bag = rng.choice([50, 100, 125, 250, 500])
    needed = per_batch * batches
    needed_bags = needed // bag + 1  # always some left over
    question = (f"A recipe needs {per_batch} {unit} of {ingredient} per batch. {name} makes {batches} batches and "
                f"buys {needed_bags} packs of {ingredient} with {bag} {unit} each. How many {unit} of {ingredient} "
                f"are left over?")
    return Problem("recipe", question, [
        Step(f"The batches need {{calc}} {unit}.", f"{per_batch} * {batches}"),
        Step(f"The packs hold {{calc}} {unit}.", f"{needed_bags} * {bag}"),
        Step(f"{{calc}} {unit} are left over.", "r1 - r0"),
    ])


def _comparison(rng: random.Random) -> Problem:
    a, b, c = rng.sample(NAMES, 3)
    _, content = rng.choice(CONTAINERS)
    base, times = rng.randint(3, 30), rng.randint(2, 5)
    fewer = rng.randint(1, base * times - 1)
    question = rng.choice([
        f"{a} has {base} {content}. {b} has {times} times as many {content} as {a}, and {c} has {fewer} fewer "
        f"{content} than {b}. How many {content} do they have in all?",
        f"{b} owns {times} times the number of {content} that {a} owns, {a} owns {base}, and {c} owns {fewer} less "
        f"than {b}. What is the total number of {content}?",
    ])
    return Problem("comparison", question, [
        Step(f"{b} has {{calc}} {content}.", f"{times} * {base}"),
        Step(f"{c} has {{calc}} {content}.", f"r0 - {fewer}"),
        Step(f"In all they have {{calc}} {content}.", f"{base} + r0 + r1"),
    ])


def _wages(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    rate, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 6)
    bonus = rng.randint(5, 50)
    question = rng.choice([
        f"{name} earns ${rate} an hour and works {hours} hours a day for {days} days. At the end {name} also gets a "
        f"${bonus} bonus. How much does {name} earn in total?",
        f"A job pays ${rate} per hour. {name} works {hours} hours on each of {days} days and is given a ${bonus} "
        f"bonus. What are {name}'s total earnings in dollars?",
    ])
    return Problem("wages", question, [
        Step("Each day pays {calc} dollars.", f"{rate} * {hours}"),
        Step(f"{days} days pay {{calc}} dollars.", f"r0 * {days}"),
        Step("With the bonus the total is {calc} dollars.", f"r1 + {bonus}"),
    ])


FAMILIES = (_shopping, _savings, _sharing, _travel, _fractions, _ages, _production, _recipe, _comparison, _wages)
def generate(split: str, size: int, seed: int = 0) -> list[dict]:
    """`size` distinct problems of `split`, deterministic in (split, size, seed)."""
    check_split_name(split)
    rng = random.Random(f"folora-math-{seed}")
    records, seen = [], set()
    while len(records) < size:
        family = FAMILIES[rng.randrange(len(FAMILIES))]
        problem = family(rng)
        if split_of(problem.question) != split or problem.question in seen:
            continue
        seen.add(problem.question)
        records.append(problem.to_record())
    return records


def check_disjoint(splits: dict[str, list[dict]]) -> None:
    """Raise if any question text appears in two splits."""
    owner: dict[str, str] = {}
    for split, records in splits.items():
        for record in records:
            other = owner.setdefault(record["question"], split)
            if other != split:
                raise ValueError(f"question appears in both {other} and {split}: {record['question'][:80]}")
