import json

order = json.loads('{"customer": "Ada", "items": ['
                   '{"name": "pen", "price": 1.5, "qty": 4}, {"name": "book", "price": 12.0, "qty": 1}]}')


def line_total(item):
    return item["price"] * item["qty"]


def invoice(order):
    lines = [f"{item['name']:<6}{line_total(item):>8.2f}" for item in order["items"]]
    total = sum(line_total(item) for item in order["items"])
    return "\n".join(lines + [f"{'total':<6}{total:>8.2f}"])


print("Invoice for", order["customer"])
print(invoice(order))
