"""The one exception type that the command line turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint): the message names the thing and the problem."""


class ArgumentError(UserError, ValueError):
    """A bad argument given from Python (a misspelt option, a size of 0): a ValueError, as Python's own are."""


def check_choice(name: str, value: object, choices) -> None:
    """A Python caller's misspelt option: one line, as the CLI's parser says it."""
    if value not in choices:
        raise ArgumentError(f"{name}={value!r}: not one of {', '.join(map(repr, choices))}")


def check_positive(name: str, value: object, zero: bool = False) -> None:
    """A size or count given from Python: a whole number above 0 (or at least 0), as the CLI's types take."""
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
        raise ArgumentError(f"{name}={value!r}: must be a whole number {'>= 0' if zero else 'above 0'}")


def described(error: BaseException, limit: int = 120) -> str:
    """A library's exception inside one of our one-line messages: its type and its text's first line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:limit]}" if text else type(error).__name__
