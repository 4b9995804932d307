/*
 * tun_exec TUN_NAME PROGRAM [ARGS...]: opens the TUN device TUN_NAME as
 * descriptor 3 and runs PROGRAM with it, the way Android hands an app the
 * descriptor of its VPN (tests/jni.rs runs the Java host so).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TUN_NAME PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    int fd = open("/dev/net/tun", O_RDWR);
    if (fd < 0) {
        perror("/dev/net/tun");
        return 1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        fprintf(stderr, "TUNSETIFF %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    if (fd != 3) {
        if (dup2(fd, 3) < 0) {
            perror("dup2");
            return 1;
        }
        close(fd);
    }
    execvp(argv[2], argv + 2);
    fprintf(stderr, "exec %s: %s\n", argv[2], strerror(errno));
    return 127;
}
