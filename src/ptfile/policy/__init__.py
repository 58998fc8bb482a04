"""The one table of allowed globals, each with its reason, and the judge of what a file uses."""
