def encode(text):
    if not text:
        return []
    runs = [[text[0], 1]]
    for char in text[1:]:
        if char == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([char, 1])
    return runs


def decode(runs):
    return "".join(char * count for char, count in runs)


runs = encode("aaabccddddd")
print(runs)
print(decode(runs))
