class Temperature:
    def __init__(self, kelvin):
        self.kelvin = kelvin

    @property
    def celsius(self):
        return self.kelvin - 273.15

    def describe(self):
        return "It is " + str(round(self.celsius, 1)) + " degrees"


print(Temperature(300).describe())
