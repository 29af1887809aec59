"""The hook process (standard library only) and the helpers the daemon shares with it.

Kept free of imports: the hook pays for every module on every Claude Code event.
"""
