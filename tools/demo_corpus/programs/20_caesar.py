import string

ALPHABET = string.ascii_lowercase


def shift(text, key):
    out = []
    for char in text.lower():
        if char in ALPHABET:
            index = (ALPHABET.index(char) + key) % len(ALPHABET)
            out.append(ALPHABET[index])
        else:
            out.append(char)
    return "".join(out)


secret = shift("attack at dawn", 3)
print(secret)
print(shift(secret, -3))
