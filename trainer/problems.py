"""How a bad config is told: the error types, a validation error in words, and unknown-key hints.

Torch-free and HTTP-free: the CLI, the worker and the web server all word a problem here, so the
same mistake reads the same everywhere.
"""

import difflib
from collections.abc import Iterable

MAX_SHOWN = 100  # characters of a user's key or value echoed back in a message
SUGGESTED_KEYS = 10  # unknown keys that get a nearest-key hint; the rest share one message


def printable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (valid in a Python str, not in UTF-8 JSON) becomes
    its \\ud800 escape, so an answer that echoes a user's key can always be written."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut(text: str) -> str:
    return printable(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…")


def shown(value) -> str:
    """A user's value as a message quotes it: its repr, cut short."""
    return _cut({True: "true", False: "false", None: "null"}[value] if value is None or isinstance(value, bool) else repr(value))


class FieldProblem(ValueError):
    """A cross-field problem that belongs to one key (so the form can show it next to the field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class FieldProblems(ValueError):
    """Several cross-field problems found by one pass over a config, each a (key, message) pair."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


class ConfigError(ValueError):
    """An invalid config; ``errors`` is a list of (key, message) pairs, one per problem."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = [(printable(str(key)), printable(str(message))) for key, message in errors]
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{key}: {message}" if key else message for key, message in self.errors]


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return _cut(str(value))


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def error_words(error: dict) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in words a person understands, without
    the key it belongs to: "must be a whole number, got 'many'"."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got, plain = f"got {shown(value)}", f"got {_number(value)}"
    words = {
        "int_parsing": f"must be a whole number, {got}",
        "int_type": f"must be a whole number, {got}",
        "int_from_float": f"must be a whole number, {got}",
        "float_parsing": f"must be a number, {got}",
        "float_type": f"must be a number, {got}",
        "finite_number": f"must be a finite number, {got}",
        "bool_parsing": f"must be true or false, {got}",
        "bool_type": f"must be true or false, {got}",
        "string_type": f"must be text, {got}",
        # a lone surrogate ("\ud800") is valid in JSON's escapes and a Python str, but it is no text
        "string_unicode": "contains a character that is not text (a lone surrogate such as \\ud800): remove it",
        "greater_than": f"must be greater than {_number(ctx.get('gt'))}, {plain}",
        "greater_than_equal": f"must be at least {_number(ctx.get('ge'))}, {plain}",
        "less_than": f"must be less than {_number(ctx.get('lt'))}, {plain}",
        "less_than_equal": f"must be at most {_number(ctx.get('le'))}, {plain}",
        "literal_error": f"must be one of {ctx.get('expected')}, {got}",
        "enum": f"must be one of {ctx.get('expected')}, {got}",
        "list_type": f"must be a list such as [[4, 12], [8, 16]], {got}",
        "tuple_type": f"each pair must be [student, teacher], {got}",
        "too_short": f"each pair must be [student, teacher], {got}",
        "string_too_long": f"is too long: keep it to {_count(ctx.get('max_length'))} characters"
        + (f" (got {len(value):,})" if isinstance(value, str) else ""),
        "number_not_bool": f"must be a number, not true or false; {got}",
        "missing": "is required",
    }
    if kind == "too_long":  # the pairs list, or one pair of more than two blocks
        limit, length = ctx.get("max_length"), ctx.get("actual_length")
        if limit == 2:
            return f"each pair must be [student, teacher], {got}"
        return f"is too long: keep it to {_count(limit)} items (got {_count(length)})"
    if kind in words:
        return words[kind]
    return f"is not valid: {printable(str(error.get('msg', 'cannot read it')))}"


def nearest_keys(key: str, known: Iterable[str]) -> list[str]:
    """The known keys closest to a misspelt one: the best match, and any nearly as close."""
    if len(key) > 2 * MAX_SHOWN:  # nothing near a key that long, and comparing it costs time
        return []
    scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in known), reverse=True)
    best = scored[0][0] if scored else 0
    return [k for score, k in scored[:3] if score >= 0.6 and score >= best - 0.03]


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    near = nearest_keys(key, known)
    hint = f"did you mean {' or '.join(near)}?" if near else "see `layersync train --help` for the known keys"
    return f"unknown config key {shown(key)}: {hint}"


def unknown_key_problems(keys: list[str], known: Iterable[str]) -> list[tuple[str, str]]:
    """One problem per unknown key, with a hint, for the first few; one problem for all the others (a
    hint each would cost time for nothing: nobody misspells hundreds of keys)."""
    known = list(known)
    problems = [(_cut(key), unknown_key_message(key, known)) for key in keys[:SUGGESTED_KEYS]]
    rest = keys[SUGGESTED_KEYS:]
    if rest:
        sample = ", ".join(shown(key) for key in rest[:5])
        problems.append(("", (f"{len(rest):,} more unknown config keys ({sample}{', …' if len(rest) > 5 else ''}): "
                             "remove them; see `layersync train --help` for the known keys")))
    return problems
