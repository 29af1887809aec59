"""Where events come from. Each source only feeds the broker (``broker.submit``)."""
