"""The one exception type a user sees as a message rather than a traceback."""


class LabError(Exception):
    """A problem the user can fix: bad configuration, an unreachable server, unknown ids.

    The CLI prints ``error: <message>`` on one line and exits with status 2. The message says
    what is wrong and how to fix it.
    """
