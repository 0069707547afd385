/* The program of the critest nonewprivs image, installed setuid root: it prints the effective uid it runs with,
 * so a container started as uid 1000 prints "Effective uid: 0" when it may gain privileges through setuid and
 * "Effective uid: 1000" under no_new_privs. Built by scripts/build-static from tests/critest/images.py. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
