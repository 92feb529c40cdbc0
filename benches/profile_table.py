#!/usr/bin/env python3
"""Where the gateway's CPU goes, from a perf profile (issue 30, item 1).

    perf script -i SYSTEM.perf.data | inferno-collapse-perf > folded.txt
    benches/profile_table.py folded.txt

Each sample (a folded stack, root first) is put in the first category whose pattern one of
its frames matches, searching from the leaf up, so that a memcpy called by the TLS layer is
counted as a copy and the TLS record work above it as TLS; the runtime and the kernel's
generic work count only when nothing more specific is in the stack. Prints a Markdown table: category,
share of the samples, and the top frames of each.
"""
import collections
import re
import sys

# (category, regex on one frame), tried leaf-first for each sample.
CATEGORIES = [
    ("copies (memcpy/memmove)", r"__memmove|__memcpy|memcpy|memmove"),
    ("allocation (malloc/free)", r"\bmalloc|\bfree\b|_int_free|_int_malloc|realloc|cfree|alloc::raw_vec|__rust_alloc|__rust_dealloc|sdallocx|mallocx"),
    ("crypto (AES-GCM, SHA, ECDHE, signatures)", r"aws_lc|\bring::|ring_core|aes_|gcm_|GFp_|sha256|sha512|x25519|p256|p384|ecp_nistz|bn_mul|ChaCha|poly1305|_ghash|aesni"),
    ("TLS records and handshakes (rustls)", r"rustls::|tokio_rustls"),
    ("spool writes and fsync", r"queue::spool|fdatasync|fsync|ext4_|jbd2"),
    ("journal", r"passerelle::journal|rusqlite|sqlite3"),
    ("metrics", r"passerelle::metrics"),
    ("logging (tracing)", r"tracing_subscriber|tracing_core|tracing::"),
    ("SMTP parsing and sessions (intake)", r"passerelle::intake"),
    ("delivery (client sessions, batching)", r"passerelle::delivery"),
    ("queue and scheduling", r"passerelle::queue"),
    ("policy, whitelist, directory", r"passerelle::policy|passerelle::trust|passerelle::directory"),
    ("network syscalls and TCP (kernel)", r"tcp_|sock_|__sys_sendto|__sys_recvfrom|do_writev|sendmsg|recvmsg|ip_|__netif|skb_|loopback|net_rx|__x64_sys_write|__x64_sys_read|ksys_write|ksys_read"),
]

# Tried only when no frame of the sample matched the above: what is left is the runtime's
# own work, or the kernel's on behalf of nothing more specific.
FALLBACK = [
    ("async runtime (tokio, epoll, futex, scheduling)", r"tokio::|epoll|futex|schedule|__schedule|pick_next|finish_task_switch|mio::"),
    ("other kernel", r"\[k\]|_\[k\]|entry_SYSCALL|syscall_|do_syscall|irq|softirq"),
]


def main(path):
    counts = collections.Counter()
    tops = collections.defaultdict(collections.Counter)
    total = 0
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        frames = stack.split(";")
        total += n
        cat = "other user space"
        for table in (CATEGORIES, FALLBACK):
            hit = None
            for f in reversed(frames):
                hit = next((c for c, rx in table if re.search(rx, f)), None)
                if hit:
                    break
            if hit:
                cat = hit
                break
        counts[cat] += n
        tops[cat][frames[-1][:90]] += n
    print("| where | share of the gateway's samples | top leaf frames |")
    print("|---|---|---|")
    for cat, n in counts.most_common():
        leaves = ", ".join("`%s` %.1f%%" % (f.replace("|", "/"), 100.0 * k / total)
                           for f, k in tops[cat].most_common(3))
        print("| %s | %.1f %% | %s |" % (cat, 100.0 * n / total, leaves))
    print("\n(%d stacks)" % sum(1 for _ in open(path)))


if __name__ == "__main__":
    main(sys.argv[1])
