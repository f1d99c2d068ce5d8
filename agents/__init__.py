"""Decision makers."""
