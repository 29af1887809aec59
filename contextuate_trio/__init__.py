"""contextuate-trio: a live monitor for Claude Code agents.

Kept free of imports on purpose: the hook imports ``contextuate_trio.hook`` on every
Claude Code event, and anything imported here would be paid for on each of them.
"""

__version__ = "0.1.0"
