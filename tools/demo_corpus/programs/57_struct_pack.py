import struct

record = struct.pack("<HIf", 7, 123456, 2.5)
print(len(record), "bytes:", record.hex())

ident, count, ratio = struct.unpack("<HIf", record)
print(f"id={ident} count={count} ratio={ratio}")
print("checksum:", sum(record) % 256)
