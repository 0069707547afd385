/*
 * moorage-pinns: the namespace helper of moorage.node.namespaces, as a static C program (the Python helper it
 * replaces costs ~25 ms of interpreter start per pod; this one ~1 ms).
 *
 *   pinns FLAGS [PATH VALUE]...
 *
 * With CLONE_NEWUSER in FLAGS it first unshare(2)s a user namespace alone, prints {"userns": true} and waits for
 * one line on stdin while the parent writes the new namespace's uid_map and gid_map, so that the namespaces made
 * next are owned by it. Then it
 * unshare(2)s FLAGS (CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS, as a decimal number), brings lo up when a new
 * network namespace was made, writes each VALUE to its PATH (the hostname, namespaced sysctls; an empty PATH
 * makes it the root of its user namespace for the writes after it: IPC sysctls are its root's), then prints one
 * JSON line, {"ready": true} or {"error": INDEX, "errno": N, "strerror": "..."} (INDEX -1: unshare, -2: lo, else
 * the failed write), and waits for EOF on stdin while the parent bind-mounts /proc/<pid>/ns/<kind>.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static void report_error(int index, int err) {
    printf("{\"error\": %d, \"errno\": %d, \"strerror\": \"%s\"}\n", index, err, strerror(err));
    fflush(stdout);
    exit(1);
}

static int lo_up(void) {
    struct ifreq ifr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0 || (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)) {
        int err = errno;
        close(fd);
        return err;
    }
    close(fd);
    return 0;
}

static int write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    size_t length = strlen(value);
    ssize_t written = write(fd, value, length);
    int err = written < 0 ? errno : ((size_t)written != length ? EIO : 0);
    if (close(fd) < 0 && err == 0)
        err = errno;
    return err;
}

int main(int argc, char **argv) {
    char buffer[256];
    if (argc < 2 || argc % 2 != 0) {
        fprintf(stderr, "usage: %s FLAGS [PATH VALUE]...\n", argv[0]);
        return 2;
    }
    int flags = atoi(argv[1]);
    if (flags & CLONE_NEWUSER) {
        if (unshare(CLONE_NEWUSER) < 0)
            report_error(-1, errno);
        printf("{\"userns\": true}\n");
        fflush(stdout);
        if (read(STDIN_FILENO, buffer, 1) != 1) /* the parent's go-ahead: its maps are written */
            return 1;
        flags &= ~CLONE_NEWUSER;
    }
    if (flags && unshare(flags) < 0)
        report_error(-1, errno);
    if (flags & CLONE_NEWNET) {
        int err = lo_up();
        if (err)
            report_error(-2, err);
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        if (argv[i][0] == '\0') { /* an empty PATH: become the user namespace's root for the writes after it */
            if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
                report_error((i - 2) / 2, errno);
            continue;
        }
        int err = write_file(argv[i], argv[i + 1]);
        if (err)
            report_error((i - 2) / 2, err);
    }
    printf("{\"ready\": true}\n");
    fflush(stdout);
    while (read(STDIN_FILENO, buffer, sizeof(buffer)) > 0)
        ;
    return 0;
}
