"""Loopback throughput: non-blocking sendfile vs pread+send, 1 MiB chunks (no broker)."""
import os, socket, threading, time, select, tempfile
N = 256 << 20; CH = 1 << 20
tmp = tempfile.NamedTemporaryFile()
tmp.write(b'x' * N); tmp.flush()
fd = os.open(tmp.name, os.O_RDONLY)
def run(mode):
    l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)
    def reader():
        c = socket.create_connection(l.getsockname()); n = 0
        buf = bytearray(1 << 20)
        while True:
            k = c.recv_into(buf)
            if not k: break
            n += k
        c.close()
    t = threading.Thread(target=reader); t.start()
    s, _ = l.accept(); s.setblocking(False)
    t0 = time.time(); off = 0
    while off < N:
        end = off + CH
        if mode == 'copy':
            data = os.pread(fd, CH, off); v = memoryview(data); p = 0
            while p < len(v):
                try: p += s.send(v[p:])
                except BlockingIOError: select.select([], [s], [])
        else:
            p = off
            while p < end:
                try: p += os.sendfile(s.fileno(), fd, p, end - p)
                except BlockingIOError: select.select([], [s], [])
        off = end
    dt = time.time() - t0
    s.close(); t.join(); l.close()
    return N / dt / 2**20
for i in range(2):
    for m in ['sendfile', 'copy']:
        print(m, round(run(m)), 'MiB/s')
