from collections import Counter

TEXT = """the quick brown fox jumps over the lazy dog
the dog barks and the fox runs away"""


def top_words(text, n):
    counts = Counter(text.split())
    return counts.most_common(n)


for word, count in top_words(TEXT, 3):
    print(f"{word:>6} {count}")
