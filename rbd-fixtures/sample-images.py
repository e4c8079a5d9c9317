#!/usr/bin/python3
"""Sample RBD images for the demo and the benchmark (python3-rbd).

Fixtures may use Ceph's Python bindings; the product itself never does.
Usage (CEPH_CONF names the cluster's ceph.conf):
  sample-images.py random POOL NAME SIZE_MIB DATA_MIB SEED   new image, DATA_MIB of data in 4 MiB pieces
  sample-images.py scatter POOL NAME COUNT SEED [FROM_MIB]   COUNT scattered 4 KiB..64 KiB writes (at or past FROM_MIB)
  sample-images.py blocks POOL NAME COUNT SEED [RUN]         COUNT distinct 64 KiB blocks rewritten, in runs of RUN (default 1) anywhere
  sample-images.py resize POOL NAME SIZE_MIB
  sample-images.py from-file POOL NAME PATH                  new image holding PATH's bytes (sparse)
  sample-images.py overwrite POOL NAME PATH                  write PATH's non-zero 64 KiB blocks over NAME
"""
import os
import random
import sys

import rados
import rbd

MIB = 1 << 20


def connect():
    cluster = rados.Rados(conffile=os.environ.get("CEPH_CONF", "/etc/ceph/ceph.conf"))
    cluster.connect(timeout=30)
    return cluster


def write_file(image, path):
    block = 64 * 1024
    zero = bytes(block)
    with open(path, "rb") as f:
        off = 0
        while True:
            chunk = f.read(block)
            if not chunk:
                break
            if chunk != zero[: len(chunk)]:
                image.write(chunk, off)
            off += len(chunk)


def main(argv):
    cmd, pool, name = argv[1], argv[2], argv[3]
    cluster = connect()
    try:
        with cluster.open_ioctx(pool) as io:
            if cmd == "random":
                size, data, seed = int(argv[4]) * MIB, int(argv[5]) * MIB, int(argv[6])
                rbd.RBD().create(io, name, size)
                rng = random.Random(seed)
                with rbd.Image(io, name) as img:
                    pieces = data // (4 * MIB)
                    slots = rng.sample(range(size // (4 * MIB)), pieces)
                    for s in sorted(slots):
                        img.write(rng.randbytes(4 * MIB), s * 4 * MIB)
            elif cmd == "scatter":
                count, seed = int(argv[4]), int(argv[5])
                start = int(argv[6]) * MIB if len(argv) > 6 else 0
                rng = random.Random(seed)
                with rbd.Image(io, name) as img:
                    size = img.size()
                    for _ in range(count):
                        length = rng.choice([4096, 16384, 65536])
                        off = rng.randrange(start, size - length) // 4096 * 4096
                        img.write(rng.randbytes(length), off)
            elif cmd == "blocks":
                count, seed = int(argv[4]), int(argv[5])
                run = int(argv[6]) if len(argv) > 6 else 1
                rng = random.Random(seed)
                with rbd.Image(io, name) as img:
                    runs = rng.sample(range(img.size() // (65536 * run)), count // run)
                    for r in sorted(runs):
                        img.write(rng.randbytes(65536 * run), r * run * 65536)
            elif cmd == "resize":
                with rbd.Image(io, name) as img:
                    img.resize(int(argv[4]) * MIB)
            elif cmd == "from-file":
                path = argv[4]
                rbd.RBD().create(io, name, os.path.getsize(path))
                with rbd.Image(io, name) as img:
                    write_file(img, path)
            elif cmd == "overwrite":
                with rbd.Image(io, name) as img:
                    write_file(img, argv[4])
            else:
                sys.exit(f"unknown command {cmd}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv)
