"""The one base of every user-facing error: the CLI prints an AsrnError as one line and exits 1.

Anything else that escapes a command is a bug and keeps its traceback. AsrnError derives from ValueError because
every user error so far is a bad value (a flag, a file's content, a manifest line).
"""


class AsrnError(ValueError):
    """Bad input or a failed precondition; the message names the file, line, video or key."""
