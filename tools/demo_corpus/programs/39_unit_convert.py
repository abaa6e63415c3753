FACTORS = {"km": 1000.0, "m": 1.0, "cm": 0.01, "mile": 1609.344}


def convert(value, src, dst):
    metres = value * FACTORS[src]
    return metres / FACTORS[dst]


for value, src, dst in [(5, "km", "mile"), (120, "cm", "m"), (1, "mile", "km")]:
    print(f"{value} {src} = {convert(value, src, dst):.3f} {dst}")
