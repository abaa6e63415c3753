TRANSITIONS = {
    ("locked", "coin"): "unlocked",
    ("unlocked", "push"): "locked",
    ("locked", "push"): "locked",
    ("unlocked", "coin"): "unlocked",
}


def run(events, state="locked"):
    trace = [state]
    for event in events:
        state = TRANSITIONS[(state, event)]
        trace.append(state)
    return trace


print(run(["coin", "push", "push", "coin", "coin"]))
