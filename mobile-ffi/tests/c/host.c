/*
 * A small app embedding geowall through its C ABI, driven line by line on
 * standard input by tests/c_abi.rs (and usable by hand):
 *
 *   host TUN_NAME MARK     opens the TUN device TUN_NAME (creating it if
 *                          needed), prints "tun ready", then reads commands:
 *
 *   start CONFIG_FILE      geowall_start on the TUN with the JSON in the file
 *   bundle FILE            geowall_update_bundle with the file's bytes
 *   ids JSON               geowall_set_identifiers
 *   dns JSON               geowall_set_dns_upstreams
 *   check HOST PORT PROTO TRAFFIC
 *   stats                  geowall_stats
 *   version
 *   stop | free
 *   rss                    this process's memory, from /proc/self/status
 *   abuse                  bad pointers, strings, JSON, handles: every call
 *                          must return its error code, none may crash
 *   quit
 *
 * Each command prints one line: "ok ...", or "err CODE MESSAGE". The
 * protect_socket callback marks every upstream socket with MARK (SO_MARK)
 * so that policy routing keeps it out of the TUN, and counts the sockets.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "geowall.h"

static atomic_ulong protected_sockets;
static atomic_ulong refused_sockets;
static atomic_ulong events;
static atomic_ulong app_lookups;
static atomic_ulong events_with_app;
static unsigned int mark;

static bool protect_socket(void *ctx, int32_t fd) {
    (void)ctx;
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
        atomic_fetch_add(&refused_sockets, 1);
        return false;
    }
    atomic_fetch_add(&protected_sockets, 1);
    return true;
}

static size_t app_for_flow(void *ctx, int32_t proto, const char *src, const char *dst,
                           char *out, size_t cap) {
    (void)ctx;
    (void)proto;
    (void)src;
    (void)dst;
    static const char id[] = "org.example.cabi";
    atomic_fetch_add(&app_lookups, 1);
    size_t n = sizeof id - 1;
    if (n > cap) n = cap;
    memcpy(out, id, n);
    return n;
}

static void on_event(void *ctx, const char *json) {
    (void)ctx;
    atomic_fetch_add(&events, 1);
    if (strstr(json, "\"app\":\"org.example.cabi\"")) atomic_fetch_add(&events_with_app, 1);
    fprintf(stderr, "event %s\n", json);
}

static void on_log(void *ctx, int32_t level, const char *msg) {
    (void)ctx;
    fprintf(stderr, "log %d %s\n", level, msg);
}

static int open_tun(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *b = realloc(buf, cap * 2 + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Prints "ok" or "err CODE MESSAGE"; returns whether it was ok. */
static bool report(GeowallStatus s, const char *ok_extra) {
    if (s == GEOWALL_STATUS_OK) {
        printf("ok%s%s\n", ok_extra ? " " : "", ok_extra ? ok_extra : "");
        return true;
    }
    char msg[512];
    geowall_last_error(msg, sizeof msg);
    printf("err %d %s\n", (int)s, msg);
    return false;
}

static int failures;

static void expect(const char *what, GeowallStatus got, GeowallStatus want) {
    char msg[256] = "";
    size_t n = geowall_last_error(msg, sizeof msg);
    if (got != want) {
        printf("abuse %s: got %d, want %d (%s)\n", what, (int)got, (int)want, msg);
        failures++;
    } else if (want != GEOWALL_STATUS_OK && n == 0) {
        printf("abuse %s: no error message\n", what);
        failures++;
    }
}

static void abuse(GeowallHandle engine) {
    GeowallHandle h = 0;
    GeowallStats st;
    GeowallVerdict v;
    GeowallVersion ver;
    static const char bad_utf8[] = {'{', '"', (char)0xff, '"', '}', 0};
    failures = 0;
    expect("start null config", geowall_start(0, NULL, NULL, &h), GEOWALL_STATUS_NULL_POINTER);
    expect("start null out", geowall_start(0, "{}", NULL, NULL), GEOWALL_STATUS_NULL_POINTER);
    expect("start invalid utf-8", geowall_start(0, bad_utf8, NULL, &h), GEOWALL_STATUS_INVALID_UTF8);
    expect("start invalid json", geowall_start(0, "{not json", NULL, &h), GEOWALL_STATUS_INVALID_CONFIG);
    expect("start unknown field", geowall_start(0, "{\"mtuu\":1500}", NULL, &h), GEOWALL_STATUS_INVALID_CONFIG);
    expect("start negative fd", geowall_start(-1, "{}", NULL, &h), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("start closed fd", geowall_start(1000, "{}", NULL, &h), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("checker unknown preset", geowall_checker_new("{\"preset\":\"nope\"}", &h), GEOWALL_STATUS_INVALID_CONFIG);
    expect("stats null out", geowall_stats(engine, NULL), GEOWALL_STATUS_NULL_POINTER);
    expect("stats bad handle", geowall_stats(987654321, &st), GEOWALL_STATUS_INVALID_HANDLE);
    expect("stop bad handle", geowall_stop(0), GEOWALL_STATUS_INVALID_HANDLE);
    expect("free bad handle", geowall_free(987654321), GEOWALL_STATUS_INVALID_HANDLE);
    expect("bundle null bytes", geowall_update_bundle(engine, NULL, 10), GEOWALL_STATUS_NULL_POINTER);
    expect("bundle garbage", geowall_update_bundle(engine, (const uint8_t *)"garbage", 7), GEOWALL_STATUS_BUNDLE_REJECTED);
    expect("ids null", geowall_set_identifiers(engine, NULL), GEOWALL_STATUS_NULL_POINTER);
    expect("ids not an object", geowall_set_identifiers(engine, "[1,2]"), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("ids invalid utf-8", geowall_set_identifiers(engine, bad_utf8), GEOWALL_STATUS_INVALID_UTF8);
    expect("dns null", geowall_set_dns_upstreams(engine, NULL), GEOWALL_STATUS_NULL_POINTER);
    expect("dns not an array", geowall_set_dns_upstreams(engine, "{\"a\":1}"), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("dns empty", geowall_set_dns_upstreams(engine, "[]"), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("dns bad upstream", geowall_set_dns_upstreams(engine, "[\"8.8.8.8\"]"), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("dns invalid utf-8", geowall_set_dns_upstreams(engine, bad_utf8), GEOWALL_STATUS_INVALID_UTF8);
    expect("dns bad handle", geowall_set_dns_upstreams(987654321, "[\"udp:192.0.2.53\"]"), GEOWALL_STATUS_INVALID_HANDLE);
    expect("check null host", geowall_check(engine, NULL, 443, 6, 0, NULL, &v), GEOWALL_STATUS_NULL_POINTER);
    expect("check null out", geowall_check(engine, "example.org", 443, 6, 0, NULL, NULL), GEOWALL_STATUS_NULL_POINTER);
    expect("check bad proto", geowall_check(engine, "example.org", 443, 99, 0, NULL, &v), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("check bad traffic", geowall_check(engine, "example.org", 443, 6, 77, NULL, &v), GEOWALL_STATUS_INVALID_ARGUMENT);
    expect("check invalid utf-8", geowall_check(engine, bad_utf8, 443, 6, 0, NULL, &v), GEOWALL_STATUS_INVALID_UTF8);
    size_t sublen = 0;
    expect("subscriptions null len", geowall_subscriptions(engine, NULL, 0, NULL), GEOWALL_STATUS_NULL_POINTER);
    expect("subscriptions bad handle", geowall_subscriptions(987654321, NULL, 0, &sublen), GEOWALL_STATUS_INVALID_HANDLE);
    expect("checker subscription without state_dir",
           geowall_checker_new("{\"subscriptions\":[{\"url\":\"https://dns.test/site/\"}]}", &h),
           GEOWALL_STATUS_INVALID_CONFIG);
    expect("version null", geowall_version(0, NULL), GEOWALL_STATUS_NULL_POINTER);
    expect("version", geowall_version(0, &ver), GEOWALL_STATUS_OK);
    /* A checker: made, used, freed, then stale. */
    expect("checker", geowall_checker_new("{\"preset\":\"clubhouse\"}", &h), GEOWALL_STATUS_OK);
    expect("checker check", geowall_check(h, "agora.io", 443, 6, GEOWALL_TRAFFIC_MEDIA, NULL, &v), GEOWALL_STATUS_OK);
    if (v.action == GEOWALL_ALLOW) {
        printf("abuse: clubhouse preset allows media to agora.io\n");
        failures++;
    }
    expect("checker as engine", geowall_stop(h), GEOWALL_STATUS_INVALID_HANDLE);
    expect("checker free", geowall_free(h), GEOWALL_STATUS_OK);
    expect("checker double free", geowall_free(h), GEOWALL_STATUS_INVALID_HANDLE);
    expect("checker use after free", geowall_check(h, "agora.io", 443, 6, 0, NULL, &v), GEOWALL_STATUS_INVALID_HANDLE);
    /* The message is cut to the buffer and NUL-terminated. */
    geowall_stop(0);
    char tiny[4] = {'x', 'x', 'x', 'x'};
    size_t full = geowall_last_error(tiny, sizeof tiny);
    if (full <= 3 || tiny[3] != 0) {
        printf("abuse: last_error does not cut to the buffer\n");
        failures++;
    }
    if (geowall_last_error(NULL, 0) != full) {
        printf("abuse: last_error length query differs\n");
        failures++;
    }
    if (failures == 0) printf("ok abuse\n");
    else printf("err %d abuse failures\n", failures);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s TUN_NAME MARK\n", argv[0]);
        return 2;
    }
    mark = (unsigned int)strtoul(argv[2], NULL, 0);
    int tun = open_tun(argv[1]);
    if (tun < 0) {
        fprintf(stderr, "cannot open TUN %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("tun ready\n");
    GeowallCallbacks cbs = {
        .context = NULL,
        .protect_socket = protect_socket,
        .app_for_flow = app_for_flow,
        .on_event = on_event,
        .on_log = on_log,
    };
    GeowallHandle engine = 0;
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char *arg = strchr(line, ' ');
        if (arg) *arg++ = 0;
        if (!strcmp(line, "start") && arg) {
            size_t len;
            char *json = read_file(arg, &len);
            if (!json) {
                printf("err -1 cannot read %s\n", arg);
                continue;
            }
            GeowallStatus s = geowall_start(tun, json, &cbs, &engine);
            free(json);
            char extra[32];
            snprintf(extra, sizeof extra, "%llu", (unsigned long long)engine);
            report(s, extra);
        } else if (!strcmp(line, "bundle") && arg) {
            size_t len;
            char *bytes = read_file(arg, &len);
            if (!bytes) {
                printf("err -1 cannot read %s\n", arg);
                continue;
            }
            GeowallStatus s = geowall_update_bundle(engine, (const uint8_t *)bytes, len);
            free(bytes);
            GeowallVersion v;
            char extra[32] = "";
            if (s == GEOWALL_STATUS_OK && geowall_version(engine, &v) == GEOWALL_STATUS_OK)
                snprintf(extra, sizeof extra, "%llu", (unsigned long long)v.bundle_sequence);
            report(s, extra);
        } else if (!strcmp(line, "answer") && arg) {
            unsigned long long prompt;
            int allow, scope;
            if (sscanf(arg, "%llu %d %d", &prompt, &allow, &scope) != 3) {
                printf("err -1 usage: answer PROMPT ALLOW(0|1) SCOPE\n");
                continue;
            }
            report(geowall_answer(engine, (uint64_t)prompt, allow != 0, scope), NULL);
        } else if (!strcmp(line, "ids") && arg) {
            report(geowall_set_identifiers(engine, arg), NULL);
        } else if (!strcmp(line, "dns") && arg) {
            report(geowall_set_dns_upstreams(engine, arg), NULL);
        } else if (!strcmp(line, "check") && arg) {
            char host[256];
            unsigned port;
            int proto, traffic;
            if (sscanf(arg, "%255s %u %d %d", host, &port, &proto, &traffic) != 4) {
                printf("err -1 usage: check HOST PORT PROTO TRAFFIC\n");
                continue;
            }
            GeowallVerdict v;
            GeowallStatus s = geowall_check(engine, host, (uint16_t)port, proto, traffic, NULL, &v);
            char extra[256];
            if (s == GEOWALL_STATUS_OK)
                snprintf(extra, sizeof extra, "%d %d [%s] [%s]", v.action, v.rule_index, v.rule, v.layer);
            report(s, s == GEOWALL_STATUS_OK ? extra : NULL);
        } else if (!strcmp(line, "stats")) {
            GeowallStats st;
            GeowallStatus s = geowall_stats(engine, &st);
            char extra[512];
            if (s == GEOWALL_STATUS_OK)
                snprintf(extra, sizeof extra,
                         "running=%u flows=%llu tun_packets=%llu opened=%llu blocked=%llu "
                         "cut=%llu refused=%llu dropped=%llu dns_queries=%llu bytes_up=%llu "
                         "bytes_down=%llu bundle_sequence=%llu protected=%lu refused_sockets=%lu "
                         "events=%lu app_lookups=%lu events_with_app=%lu asked=%llu",
                         st.running, (unsigned long long)st.flows,
                         (unsigned long long)st.tun_packets, (unsigned long long)st.opened,
                         (unsigned long long)st.blocked, (unsigned long long)st.cut,
                         (unsigned long long)st.refused, (unsigned long long)st.dropped,
                         (unsigned long long)st.dns_queries, (unsigned long long)st.bytes_up,
                         (unsigned long long)st.bytes_down,
                         (unsigned long long)st.bundle_sequence,
                         atomic_load(&protected_sockets), atomic_load(&refused_sockets),
                         atomic_load(&events), atomic_load(&app_lookups),
                         atomic_load(&events_with_app), (unsigned long long)st.asked);
            report(s, s == GEOWALL_STATUS_OK ? extra : NULL);
        } else if (!strcmp(line, "subs")) {
            size_t len = 0;
            GeowallStatus s = geowall_subscriptions(engine, NULL, 0, &len);
            char *json = s == GEOWALL_STATUS_OK ? malloc(len + 1) : NULL;
            if (json) s = geowall_subscriptions(engine, json, len + 1, &len);
            report(s, s == GEOWALL_STATUS_OK && json ? json : NULL);
            free(json);
        } else if (!strcmp(line, "version")) {
            GeowallVersion v;
            GeowallStatus s = geowall_version(engine, &v);
            char extra[96];
            if (s == GEOWALL_STATUS_OK)
                snprintf(extra, sizeof extra, "abi=%u library=%s bundle=%llu", v.abi, v.library,
                         (unsigned long long)v.bundle_sequence);
            report(s, s == GEOWALL_STATUS_OK ? extra : NULL);
        } else if (!strcmp(line, "stop")) {
            report(geowall_stop(engine), NULL);
        } else if (!strcmp(line, "free")) {
            report(geowall_free(engine), NULL);
        } else if (!strcmp(line, "rss")) {
            FILE *f = fopen("/proc/self/status", "r");
            char l[256], out[256] = "";
            while (f && fgets(l, sizeof l, f)) {
                unsigned long kib;
                char key[32];
                if (sscanf(l, "%31[^:]: %lu kB", key, &kib) == 2 &&
                    (!strcmp(key, "VmHWM") || !strcmp(key, "VmRSS") || !strcmp(key, "RssAnon") ||
                     !strcmp(key, "RssFile"))) {
                    size_t n = strlen(out);
                    snprintf(out + n, sizeof out - n, "%s%s=%lu", n ? " " : "", key, kib);
                }
            }
            if (f) fclose(f);
            printf("ok %s\n", out);
        } else if (!strcmp(line, "abuse")) {
            abuse(engine);
        } else if (!strcmp(line, "quit")) {
            break;
        } else {
            printf("err -1 unknown command '%s'\n", line);
        }
    }
    close(tun);
    return 0;
}
