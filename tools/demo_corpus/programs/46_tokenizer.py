import re

TOKEN = re.compile(r"\s*(?:(\d+\.?\d*)|(.))")


def tokenize(expression):
    tokens = []
    for number, operator in TOKEN.findall(expression):
        if number:
            tokens.append(("NUM", float(number)))
        else:
            tokens.append(("OP", operator))
    return tokens


for kind, value in tokenize("3.5 + 4 * (2 - 1)"):
    print(kind, value)
