"""Helpers every layer may use: atomic file writes, log escaping, allocator settings, flag parsing."""
