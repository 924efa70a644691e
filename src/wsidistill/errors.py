"""Errors a user fixes by changing an input: the CLI prints them as one line, not a traceback.

Kept free of heavy imports so every ``wsidistill`` verb can catch them without
loading the modules that raise them.
"""


class InputError(Exception):
    """A slide, annotation, sample sheet, config value or cache that cannot be used as given.

    The message names the file or key and the fix.
    """
