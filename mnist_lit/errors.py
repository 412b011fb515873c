"""The one exception type that the command line turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a checkpoint): the message names the thing and the problem."""


class ArgumentError(UserError, ValueError):
    """A bad argument given from Python (a misspelt option, a size of 0): a ValueError, as Python's own are."""
