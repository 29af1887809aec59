"""Claude Code hook entry point inside the installed package.

``hooks install`` points Claude Code at this file: ``<python3> -I -S <site-packages>/
contextuate_trio/hook_emit.py``. Under ``-I -S`` neither the script's folder nor
site-packages is on sys.path, so the folder holding the package is put there (only
``contextuate_trio.hook``, standard library only, is imported from it). A stub on
purpose: a script run directly is compiled on every run, the modules it imports are
byte-code cached. Its path is what installed settings name: it stays here.
"""

import sys

if __name__ == "__main__":
    sys.path.insert(0, __file__.rpartition("/")[0].rpartition("/")[0] or "/")
    from contextuate_trio.hook.process import main

    main()
