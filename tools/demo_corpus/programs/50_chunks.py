def chunked(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def pages(items, size):
    chunks = chunked(items, size)
    for number, chunk in enumerate(chunks, start=1):
        yield f"page {number}/{len(chunks)}: {chunk}"


for line in pages(list(range(1, 11)), 4):
    print(line)
