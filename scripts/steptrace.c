// steptrace: run a command with every thread single-stepped under ptrace and
// write the unique instruction addresses it executed inside the command's own
// binary, one hex number a line, relative to the binary's load base (the VMAs
// of a linker map). Used by scripts/layout-run-path.py (issue 15): unlike a
// sampling profiler it misses no function, and unlike valgrind it runs the
// real thing, seccomp filters included. ~1.6 M steps for the tiny PVH guest,
// about a minute on kvm_pvm.
//
// usage: steptrace OUT cmd [args...]
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned long base, lo, hi;
static unsigned char *seen;
static int *threads;
static size_t nthreads, cap;

static int known(int tid) {
    for (size_t i = 0; i < nthreads; i++)
        if (threads[i] == tid) return 1;
    if (nthreads == cap) {
        cap = cap ? cap * 2 : 64;
        threads = realloc(threads, cap * sizeof *threads);
        if (!threads) exit(1);
    }
    threads[nthreads++] = tid;
    return 0;
}

// The executable mapping of `exe` and the lowest address it is mapped at.
static void find_text(int pid, const char *exe) {
    char maps[64], line[4096], real[PATH_MAX];
    if (!realpath(exe, real)) {
        perror(exe);
        exit(1);
    }
    snprintf(maps, sizeof maps, "/proc/%d/maps", pid);
    FILE *f = fopen(maps, "r");
    if (!f) {
        perror(maps);
        exit(1);
    }
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char perms[8], path[PATH_MAX] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %4095s", &a, &b, perms, path) < 3) continue;
        if (strcmp(path, real)) continue;
        if (!base || a < base) base = a;
        if (perms[2] == 'x') lo = a, hi = b;
    }
    fclose(f);
    if (!hi) {
        fprintf(stderr, "steptrace: no executable mapping of %s\n", real);
        exit(1);
    }
    seen = calloc((hi - lo) / 8 + 1, 1);
    if (!seen) exit(1);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: steptrace OUT cmd [args...]\n");
        return 2;
    }
    int pid = fork();
    if (pid < 0) return 1;
    if (!pid) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execvp(argv[2], argv + 2);
        _exit(127);
    }
    int st, tid, rc = 0;
    waitpid(pid, &st, 0); // stopped at exec
    if (!WIFSTOPPED(st)) return 1;
    ptrace(PTRACE_SETOPTIONS, pid, 0, PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL);
    find_text(pid, argv[2]);
    known(pid);
    long steps = 0;
    ptrace(PTRACE_SINGLESTEP, pid, 0, 0);
    while ((tid = waitpid(-1, &st, __WALL)) > 0) {
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            if (tid == pid) rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            continue;
        }
        if (!WIFSTOPPED(st)) continue;
        int sig = WSTOPSIG(st), event = st >> 16, deliver = 0;
        if (!known(tid) && sig == SIGSTOP) sig = 0; // a new thread's first stop
        if (sig == SIGTRAP) {
            if (!event) {
                errno = 0;
                unsigned long ip = ptrace(PTRACE_PEEKUSER, tid, offsetof(struct user_regs_struct, rip), 0);
                if (!errno && ip >= lo && ip < hi) seen[(ip - lo) >> 3] |= 1 << ((ip - lo) & 7);
                steps++;
            }
        } else if (sig) {
            deliver = sig;
        }
        if (ptrace(PTRACE_SINGLESTEP, tid, 0, deliver) < 0 && errno != ESRCH) perror("steptrace: step");
    }
    FILE *o = fopen(argv[1], "w");
    if (!o) {
        perror(argv[1]);
        return 1;
    }
    for (unsigned long i = 0; i < hi - lo; i++)
        if (seen[i >> 3] & (1 << (i & 7))) fprintf(o, "%lx\n", i + lo - base);
    fclose(o);
    fprintf(stderr, "steptrace: %ld steps, exit status %d\n", steps, rc);
    return 0;
}
