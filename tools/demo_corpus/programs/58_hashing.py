import hashlib

files = {"a.txt": b"hello world\n", "b.txt": b"hello world\n", "c.txt": b"goodbye\n"}


def duplicates(files):
    seen = {}
    for name, content in sorted(files.items()):
        digest = hashlib.sha256(content).hexdigest()
        seen.setdefault(digest, []).append(name)
    return [names for names in seen.values() if len(names) > 1]


print(duplicates(files))
print(hashlib.md5(files["c.txt"]).hexdigest()[:8])
