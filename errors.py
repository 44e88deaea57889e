"""The one exception type for errors a user can cause.

The CLI prints its message on one line and exits with status 2. Bugs are not caught:
anything that is not a ``TaskregError`` propagates with its traceback.
"""


class TaskregError(Exception):
    """A problem with the user's input or the registry's state, with a message a person can act on."""
