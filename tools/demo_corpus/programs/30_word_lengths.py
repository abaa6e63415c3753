def histogram(words):
    lengths = {}
    for word in words:
        lengths.setdefault(len(word), []).append(word)
    return lengths


words = "a journey of a thousand miles begins with a single step".split()
hist = histogram(words)
for length in sorted(hist):
    print(length, "#" * len(hist[length]), hist[length])
