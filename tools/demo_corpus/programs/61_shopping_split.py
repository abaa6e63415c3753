expenses = {"ana": 42.0, "ben": 18.5, "cy": 0.0}


def settle(expenses):
    share = sum(expenses.values()) / len(expenses)
    balances = {name: round(paid - share, 2) for name, paid in expenses.items()}
    debtors = sorted(name for name, b in balances.items() if b < 0)
    creditors = sorted(name for name, b in balances.items() if b > 0)
    return share, debtors, creditors


share, debtors, creditors = settle(expenses)
print(f"each pays {share:.2f}")
print("owe money:", debtors, "are owed:", creditors)
