"""The restricted pickle engine, the values it produces, and the protocol-2 emitter."""
