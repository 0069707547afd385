/* pgrep and ipcs for the critest busybox images: upstream busybox has both applets, Debian's busybox-static
 * has neither, and critest runs `pgrep sleep` (its stderr must stay empty) and `ipcs -m`. One static binary;
 * the applet is the basename of argv[0]. Built by scripts/build-static from tests/critest/images.py.
 *
 *   pgrep [-f] [-x] PATTERN   PIDs (one a line, ascending) whose name (-f: command line) matches the extended
 *                             regex (-x: whole); itself excluded. Exit 0 if one matched, 1 if none, 2 on usage.
 *   ipcs [-a] [-q] [-m] [-s]  the IPC namespace's message queues, shared memory segments and semaphore arrays,
 *                             read from /proc/sysvipc, in util-linux's layout (owners numeric: no NSS here). */
#include <dirent.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads up to size-1 bytes of a small /proc file, NUL-terminated; the length, or -1. */
static ssize_t read_small(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (ssize_t)n;
}

static int pgrep(int argc, char **argv) {
    int full = 0, exact = 0, opt;
    while ((opt = getopt(argc, argv, "fx")) != -1) {
        if (opt == 'f')
            full = 1;
        else if (opt == 'x')
            exact = 1;
        else
            return 2;
    }
    if (optind != argc - 1) {
        fputs("usage: pgrep [-fx] PATTERN\n", stderr);
        return 2;
    }
    char pattern[4096];
    snprintf(pattern, sizeof pattern, exact ? "^(%s)$" : "%s", argv[optind]);
    regex_t re;
    if (regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB) != 0) {
        fprintf(stderr, "pgrep: bad pattern: %s\n", argv[optind]);
        return 2;
    }
    DIR *proc = opendir("/proc");
    if (proc == NULL) {
        perror("pgrep: /proc");
        return 3;
    }
    long self = (long)getpid();
    int found = 0;
    struct dirent *d;
    while ((d = readdir(proc)) != NULL) {
        char *end;
        long pid = strtol(d->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || pid == self)
            continue;
        char path[64], text[4096];
        snprintf(path, sizeof path, "/proc/%ld/%s", pid, full ? "cmdline" : "comm");
        ssize_t n = read_small(path, text, sizeof text);
        if (n <= 0)
            continue;
        for (ssize_t i = 0; i < n; i++)
            if (text[i] == '\0')
                text[i] = ' ';
        while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\n'))
            text[--n] = '\0';
        if (regexec(&re, text, 0, NULL, 0) == 0) {
            printf("%ld\n", pid);
            found = 1;
        }
    }
    closedir(proc);
    regfree(&re);
    return found ? 0 : 1;
}

struct facility {
    const char *file, *title, *header;
    int kind; /* 'q', 'm' or 's' */
};

static const struct facility facilities[] = {
    {"/proc/sysvipc/msg", "Message Queues", "key        msqid      owner      perms      used-bytes   messages    ", 'q'},
    {"/proc/sysvipc/shm", "Shared Memory Segments",
     "key        shmid      owner      perms      bytes      nattch     status      ", 'm'},
    {"/proc/sysvipc/sem", "Semaphore Arrays", "key        semid      owner      perms      nsems     ", 's'},
};

/* One table: the /proc/sysvipc columns are key id perms, then per facility (see proc(5)). */
static void ipcs_table(const struct facility *fac) {
    printf("\n------ %s --------\n%s\n", fac->title, fac->header);
    FILE *f = fopen(fac->file, "re");
    if (f == NULL)
        return;
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) { /* the header */
        fclose(f);
        return;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        int key, id;
        unsigned perms, uid;
        unsigned long a, b, c, d, e;
        if (fac->kind == 'm' && sscanf(line, "%d %d %o %lu %lu %lu %lu %u", &key, &id, &perms, &a, &b, &c, &d, &uid) == 8)
            printf("0x%08x %-10d %-10u %-10o %-10lu %-10lu %-12s\n", (unsigned)key, id, uid, perms & 0777, a, d,
                   (perms & 01000) ? "dest" : "");
        else if (fac->kind == 'q' &&
                 sscanf(line, "%d %d %o %lu %lu %lu %lu %u", &key, &id, &perms, &a, &b, &c, &e, &uid) == 8)
            printf("0x%08x %-10d %-10u %-10o %-12lu %-12lu\n", (unsigned)key, id, uid, perms & 0777, a, b);
        else if (fac->kind == 's' && sscanf(line, "%d %d %o %lu %u", &key, &id, &perms, &a, &uid) == 5)
            printf("0x%08x %-10d %-10u %-10o %-10lu\n", (unsigned)key, id, uid, perms & 0777, a);
    }
    fclose(f);
}

static int ipcs(int argc, char **argv) {
    int want[3] = {0, 0, 0}, any = 0, opt;
    while ((opt = getopt(argc, argv, "aqms")) != -1) {
        for (int i = 0; i < 3; i++)
            if (opt == 'a' || opt == facilities[i].kind)
                want[i] = any = 1;
        if (opt == '?')
            return 1;
    }
    for (int i = 0; i < 3; i++)
        if (want[i] || !any)
            ipcs_table(&facilities[i]);
    putchar('\n');
    return 0;
}

int main(int argc, char **argv) {
    const char *name = strrchr(argv[0], '/');
    name = name != NULL ? name + 1 : argv[0];
    if (strcmp(name, "pgrep") == 0)
        return pgrep(argc, argv);
    if (strcmp(name, "ipcs") == 0)
        return ipcs(argc, argv);
    fprintf(stderr, "%s: unknown applet (this binary runs as pgrep or ipcs)\n", name);
    return 2;
}
