import itertools

# The server is down for the first three calls (no randomness: every run prints the same).
outcomes = itertools.chain([False, False, False], itertools.repeat(True))


def flaky_fetch(url):
    if not next(outcomes):
        raise ConnectionError(f"could not reach {url}")
    return f"<html>{url}</html>"


def fetch_with_retry(url, attempts=5):
    for attempt in range(1, attempts + 1):
        try:
            return flaky_fetch(url), attempt
        except ConnectionError as error:
            print(f"attempt {attempt} failed: {error}")
    raise RuntimeError("giving up")


page, tries = fetch_with_retry("example.org")
print(f"got {len(page)} bytes after {tries} tries")
