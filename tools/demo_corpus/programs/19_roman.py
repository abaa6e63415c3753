VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}


def from_roman(numeral):
    total = 0
    for i, char in enumerate(numeral):
        value = VALUES[char]
        if i + 1 < len(numeral) and VALUES[numeral[i + 1]] > value:
            total -= value
        else:
            total += value
    return total


for numeral in ["XIV", "MCMXC", "CDXLIV"]:
    print(numeral, from_roman(numeral))
