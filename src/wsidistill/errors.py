"""Errors a user fixes by changing an input: the CLI prints them as one line, not a traceback.

Kept free of heavy imports so every ``wsidistill`` verb can catch them without
loading the modules that raise them.
"""


class InputError(Exception):
    """A slide, annotation, sample sheet, config value or cache that cannot be used as given.

    The message names the file or key and the fix.
    """


class OutputWriteError(InputError, OSError):
    """An output that could not be written (disk full, quota, read-only or unwritable folder).

    The message names the output and the file that failed; nothing partial is left behind.
    """


class UnlabelledSlideError(InputError, ValueError):
    """A slide that must have labelled patches (a training slide) and has none (issue 17, kind 7)."""


class MetricsError(InputError, ValueError):
    """Metrics JSONs that cannot be used as given (``wsidistill tables``, ``claims``): unreadable or incomplete, two
    of one model and seed, a pair of models evaluated on different test patches, or, for the claims, Teachers at
    two magnifications."""
