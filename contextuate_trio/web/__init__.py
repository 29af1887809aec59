"""The sinks people look at: the HTTP API + dashboard, and the WebSocket fan-out."""
