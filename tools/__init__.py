"""Scripts that build the demo data. Not part of the installed `explorer` package."""
