from contextlib import contextmanager

log = []


@contextmanager
def section(name):
    log.append(f"enter {name}")
    try:
        yield len(log)
    finally:
        log.append(f"exit {name}")


with section("load") as depth:
    data = [n * n for n in range(5)]
    log.append(f"loaded {len(data)} items at depth {depth}")
with section("save"):
    log.append("saved " + ",".join(map(str, data)))
print("\n".join(log))
