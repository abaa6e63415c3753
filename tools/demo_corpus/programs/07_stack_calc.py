def evaluate(expression):
    """Evaluate a postfix expression such as '3 4 + 2 *'."""
    stack = []
    for token in expression.split():
        if token in "+-*/":
            right = stack.pop()
            left = stack.pop()
            if token == "+":
                stack.append(left + right)
            elif token == "-":
                stack.append(left - right)
            elif token == "*":
                stack.append(left * right)
            else:
                stack.append(left / right)
        else:
            stack.append(float(token))
    return stack[0]


print(evaluate("3 4 + 2 *"))
print(evaluate("10 2 8 * + 3 -"))
