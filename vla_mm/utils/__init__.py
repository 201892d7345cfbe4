"""Utilities of the command-line tools."""
