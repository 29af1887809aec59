"""Claude Code hook entry point: ``python3 -I -S /abs/path/hook_emit.py``.

A stub on purpose: a script run directly is compiled on every run, a module imported
from it is byte-code cached. Under ``-I`` the script's folder is not on sys.path.
"""

import sys

sys.path.insert(0, __file__.rpartition("/")[0] or ".")
from contextuate_trio.hook.process import main  # noqa: E402

main()
