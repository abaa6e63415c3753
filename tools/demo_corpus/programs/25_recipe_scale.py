from fractions import Fraction

recipe = {"flour": Fraction(3, 2), "sugar": Fraction(1, 3), "eggs": Fraction(2)}


def scale(recipe, servings, base=4):
    factor = Fraction(servings, base)
    return {item: amount * factor for item, amount in recipe.items()}


for item, amount in scale(recipe, 6).items():
    print(f"{item}: {amount}")
