def moving_average(values, window):
    averages = []
    for i in range(len(values) - window + 1):
        chunk = values[i:i + window]
        averages.append(sum(chunk) / window)
    return averages


prices = [10, 12, 13, 12, 15, 18, 17]
print(moving_average(prices, 3))
