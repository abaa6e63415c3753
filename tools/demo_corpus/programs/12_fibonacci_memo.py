from functools import lru_cache


@lru_cache(maxsize=None)
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


sequence = [fib(i) for i in range(15)]
print(sequence)
print("ratio:", sequence[-1] / sequence[-2])
