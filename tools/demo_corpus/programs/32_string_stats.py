def stats(sentence):
    words = sentence.split()
    longest = max(words, key=len)
    vowels = sum(1 for ch in sentence.lower() if ch in "aeiou")
    return {"words": len(words), "longest": longest, "vowels": vowels,
            "capitalised": sentence.title()}


for key, value in stats("python makes simple things simple").items():
    print(f"{key}: {value}")
