"""Publishing to Redis: the key contract, connections, the embedded server, versions, writer."""
