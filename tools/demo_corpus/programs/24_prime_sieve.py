def primes_below(limit):
    is_prime = [True] * limit
    is_prime[0] = is_prime[1] = False
    for n in range(2, int(limit ** 0.5) + 1):
        if is_prime[n]:
            for multiple in range(n * n, limit, n):
                is_prime[multiple] = False
    return [n for n in range(limit) if is_prime[n]]


primes = primes_below(50)
print(primes)
print("count:", len(primes), "largest:", primes[-1])
