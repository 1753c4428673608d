/* WebSocket echo load generator: N connections on one epoll loop, each sending a small
 * masked text frame and waiting for its echo, for D seconds; prints one JSON line.
 *
 *     cc -O2 -o /tmp/ws_echo_client scripts/bench/ws_echo_client.c
 *     /tmp/ws_echo_client 127.0.0.1 8000 /echo 100 10 32    (SIZE: 1 to 65535 bytes)
 *
 * A C client so that one core of client drives more round trips than one server worker
 * can answer (the Python client in ws_echo.py tops out first): what is measured is the
 * server. Plain ws:// only; no extensions are offered. Every frame the server sends must
 * be the unmasked echo of what was sent (any other byte is an error, counted). Bounded:
 * connect and handshake time out after 10 s, the run after D seconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    int state; /* 0 handshake, 1 waiting for the echo, 2 dead */
    size_t got;
    char buf[4 + 65535];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s HOST PORT PATH CONNECTIONS SECONDS SIZE\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argv[3];
    int port = atoi(argv[2]), n = atoi(argv[4]), size = atoi(argv[6]);
    double secs = atof(argv[5]);
    if (n < 1 || n > 10000 || size < 1 || size > 65535 || secs <= 0) {
        fprintf(stderr, "CONNECTIONS 1..10000, SIZE 1..65535, SECONDS > 0\n");
        return 2;
    }
    /* the frame every connection sends: FIN|TEXT, masked, SIZE bytes of 'x'; its echo comes
     * unmasked, its length in the same form */
    static unsigned char frame[8 + 65535], echo[4 + 65535];
    unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = size < 126 ? 2 : 4;
    frame[0] = echo[0] = 0x81;
    if (size < 126) {
        frame[1] = 0x80 | size;
        echo[1] = size;
    } else {
        frame[1] = 0x80 | 126;
        echo[1] = 126;
        frame[2] = echo[2] = size >> 8;
        frame[3] = echo[3] = size & 0xff;
    }
    memcpy(frame + h, mask, 4);
    for (int i = 0; i < size; i++) frame[h + 4 + i] = 'x' ^ mask[i % 4];
    memset(echo + h, 'x', size);
    size_t flen = h + 4 + size, elen = h + size;

    char req[512];
    int rlen = snprintf(req, sizeof req,
                        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                        path, host, port);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "HOST must be an IPv4 address\n");
        return 2;
    }
    int ep = epoll_create1(0);
    struct conn *cs = calloc(n, sizeof *cs);
    long errors = 0, round_trips = 0, opened = 0;
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {10, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || write(fd, req, rlen) != rlen) {
            errors++;
            close(fd);
            cs[i].state = 2;
            continue;
        }
        /* the 101 head, read blocking (bounded by SO_RCVTIMEO) */
        size_t got = 0;
        char *end = NULL;
        while (!end && got < sizeof cs[i].buf - 1) {
            ssize_t r = read(fd, cs[i].buf + got, sizeof cs[i].buf - 1 - got);
            if (r <= 0) break;
            got += r;
            cs[i].buf[got] = 0;
            end = strstr(cs[i].buf, "\r\n\r\n");
        }
        if (!end || strncmp(cs[i].buf, "HTTP/1.1 101", 12) != 0 || got != (size_t)(end + 4 - cs[i].buf)) {
            errors++;
            close(fd);
            cs[i].state = 2;
            continue;
        }
        cs[i].fd = fd;
        cs[i].state = 1;
        cs[i].got = 0;
        opened++;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    double t0 = now(), stop = t0 + secs;
    for (int i = 0; i < n; i++)
        if (cs[i].state == 1 && write(cs[i].fd, frame, flen) != (ssize_t)flen) {
            errors++;
            cs[i].state = 2;
        }
    struct epoll_event evs[256];
    double t;
    while ((t = now()) < stop) {
        int k = epoll_wait(ep, evs, 256, 100);
        for (int j = 0; j < k; j++) {
            struct conn *c = &cs[evs[j].data.u32];
            if (c->state != 1) continue;
            ssize_t r = read(c->fd, c->buf + c->got, elen - c->got);
            if (r <= 0) {
                errors++;
                c->state = 2;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->got += r;
            if (c->got < elen) continue;
            if (memcmp(c->buf, echo, elen) != 0) {
                errors++;
                c->state = 2;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            round_trips++;
            c->got = 0;
            if (write(c->fd, frame, flen) != (ssize_t)flen) {
                errors++;
                c->state = 2;
            }
        }
    }
    double took = now() - t0;
    /* close politely: a close frame (1000), then the socket */
    unsigned char cl[8] = {0x88, 0x82, mask[0], mask[1], mask[2], mask[3], 0x03 ^ mask[0], 0xe8 ^ mask[1]};
    for (int i = 0; i < n; i++)
        if (cs[i].state != 2) {
            if (write(cs[i].fd, cl, sizeof cl) < 0) errors++;
            close(cs[i].fd);
        }
    printf("{\"connections\": %d, \"opened\": %ld, \"seconds\": %.3f, \"message_bytes\": %d, "
           "\"round_trips\": %ld, \"round_trips_per_s\": %.1f, \"errors\": %ld}\n",
           n, opened, took, size, round_trips, round_trips / took, errors);
    return errors ? 1 : 0;
}
