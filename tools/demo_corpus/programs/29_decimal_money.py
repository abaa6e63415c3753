from decimal import Decimal, ROUND_HALF_UP

prices = ["19.99", "5.01", "0.10"]
TAX = Decimal("0.2")


def with_tax(price):
    amount = Decimal(price) * (1 + TAX)
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


totals = [with_tax(p) for p in prices]
print(totals)
print("sum:", sum(totals))
