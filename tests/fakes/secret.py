"""A token as hostile as they come, and the check that no piece of it leaked.

Quotes, backslashes, shell and JSON specials and more than 300 characters: an escaped copy
(``repr``, JSON) differs from the token, and a message cut short keeps only a prefix, so a test
that looks for the whole token alone would miss both.
"""

from __future__ import annotations

TOKEN = "t0k'\"\\n$(x)`y`;&|<>{}%s" + "".join(f"{i:03d}\\\"'" for i in range(50))


def leaked(token: str, text: str) -> bool:
    """Whether any 12 characters of ``token`` in a row appear in ``text``."""
    return any(token[i : i + 12] in text for i in range(len(token) - 11))
