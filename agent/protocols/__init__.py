"""Field protocols: sans-IO codecs and the transports that own their IO."""
