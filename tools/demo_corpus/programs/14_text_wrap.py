import textwrap

PARAGRAPH = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
             "it was the age of foolishness, it was the epoch of belief.")


def boxed(text, width):
    lines = textwrap.wrap(text, width)
    border = "+" + "-" * (width + 2) + "+"
    body = ["| " + line.ljust(width) + " |" for line in lines]
    return "\n".join([border, *body, border])


print(boxed(PARAGRAPH, 30))
