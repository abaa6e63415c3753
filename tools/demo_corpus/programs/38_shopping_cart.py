class Cart:
    def __init__(self):
        self.items = {}

    def add(self, name, price, qty=1):
        current = self.items.get(name, (price, 0))
        self.items[name] = (price, current[1] + qty)

    def total(self):
        return sum(price * qty for price, qty in self.items.values())

    def receipt(self):
        lines = [f"{name} x{qty}: {price * qty:.2f}" for name, (price, qty) in sorted(self.items.items())]
        return "\n".join(lines) + f"\nTOTAL {self.total():.2f}"


cart = Cart()
cart.add("tea", 3.5)
cart.add("milk", 1.2, 2)
cart.add("tea", 3.5)
print(cart.receipt())
