def to_binary(n, width=8):
    return format(n, f"0{width}b")


def count_set_bits(n):
    count = 0
    while n:
        n &= n - 1
        count += 1
    return count


for value in (5, 42, 255):
    print(value, to_binary(value), count_set_bits(value))
print("mask:", to_binary(0b1010 ^ 0b0110, 4))
