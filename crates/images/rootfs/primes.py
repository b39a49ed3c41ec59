#!/usr/bin/python3
"""The paper's Table 1 program: count the primes in 2..N by trial division.

Divisors i are tried while i * i <= j, the bound kvmkit's no_std prime workload uses, so
both guest kinds report the same counts (N=1e5: 9592)."""
import sys

n = int(sys.argv[1])
count = 0
for j in range(2, n + 1):
    i = 2
    while i * i <= j:
        if j % i == 0:
            break
        i += 1
    else:
        count += 1
print(count)
