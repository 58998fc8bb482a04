"""The tools behind the command: convert, edit, compare, statistics, inspection, fleet."""
