from enum import Enum


class Light(Enum):
    RED = 1
    GREEN = 2
    YELLOW = 3


NEXT = {Light.RED: Light.GREEN, Light.GREEN: Light.YELLOW, Light.YELLOW: Light.RED}


def cycle(start, steps):
    state = start
    seen = [state.name]
    for _ in range(steps):
        state = NEXT[state]
        seen.append(state.name)
    return seen


print(" -> ".join(cycle(Light.RED, 4)))
print(Light(2))
