import re

LOG = """2024-03-01 12:00:01 ERROR disk full on /dev/sda1
2024-03-01 12:00:05 INFO backup started
2024-03-01 12:01:17 ERROR timeout talking to db-2
2024-03-01 12:02:00 WARNING high load: 7.5"""

PATTERN = re.compile(r"(\S+) (\S+) (\w+) (.*)")


def errors(log):
    found = []
    for line in log.splitlines():
        match = PATTERN.match(line)
        if match.group(3) == "ERROR":
            found.append(match.group(4))
    return found


for message in errors(LOG):
    print("!", message)
