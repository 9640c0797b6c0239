"""The terminal the `quotaflow` commands write to: results on stdout, errors on stderr."""

from __future__ import annotations

from rich.console import Console

#: Emoji codes off: a user's `:-1:` must print as typed.
console = Console(highlight=False, emoji=False)
#: Where errors and warnings go; `:-1:` in a message stays `:-1:`.
errors = Console(stderr=True, highlight=False, emoji=False)
