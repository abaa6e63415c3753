def luhn_valid(number):
    digits = [int(d) for d in str(number)]
    odd = digits[-1::-2]
    even = digits[-2::-2]
    total = sum(odd)
    for digit in even:
        total += sum(divmod(digit * 2, 10))
    return total % 10 == 0


for card in (4539578763621486, 1234567812345678, 79927398713):
    print(card, "valid" if luhn_valid(card) else "invalid")
