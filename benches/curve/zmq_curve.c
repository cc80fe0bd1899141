/* A minimal NoisePage-protocol server and a closed-loop client on libzmq,
 * speaking CURVE: the reference `messenger serve --curve-cert` is measured
 * against (benches/curve/run.py builds and runs this). Linked against the
 * libzmq that pyzmq ships (4.3 with libsodium, CURVE on); the few
 * declarations needed are written out below, so no zmq.h is required.
 *
 *   ("-" for a key: NULL instead of CURVE, for the plaintext cells)
 *
 *   zmq_curve server ENDPOINT SECRET_Z85
 *       ROUTER; ACKs every non-ACK message ("N-0-2-") and answers ECHO
 *       (dst_cb 1) with the body, as benches/benches/roundtrip/libzmq.rs.
 *   zmq_curve client ENDPOINT SERVER_PUBLIC_Z85 SIZE IN_FLIGHT WARMUP_S SECONDS
 *       DEALER with a fresh key pair; IN_FLIGHT requests in a closed loop
 *       (each reply ACKed, then the next request), prints the round trips
 *       per second of the measured window on stdout.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void *zmq_ctx_new(void);
void *zmq_socket(void *, int);
int zmq_setsockopt(void *, int, const void *, size_t);
int zmq_getsockopt(void *, int, void *, size_t *);
int zmq_bind(void *, const char *);
int zmq_connect(void *, const char *);
int zmq_send(void *, const void *, size_t, int);
int zmq_recv(void *, void *, size_t, int);
int zmq_curve_keypair(char *z85_public, char *z85_secret);
uint8_t *zmq_z85_decode(uint8_t *dest, const char *string);

enum { ROUTER = 6, DEALER = 5, SNDMORE = 2, RCVMORE = 13, SNDHWM = 23, RCVHWM = 24,
       LINGER = 17, RCVTIMEO = 27, CURVE_SERVER = 47, CURVE_PUBLICKEY = 48,
       CURVE_SECRETKEY = 49, CURVE_SERVERKEY = 50 };

#define MAX_FRAME (1 << 20)

static void die(const char *what) { perror(what); exit(1); }

static void set_int(void *s, int opt, int v) {
    if (zmq_setsockopt(s, opt, &v, sizeof v) != 0) die("setsockopt");
}

static void *socket_of(void *ctx, int type) {
    void *s = zmq_socket(ctx, type);
    if (!s) die("zmq_socket");
    /* As the Rust minimal pair: no high-water mark drops at 1000 in flight. */
    set_int(s, SNDHWM, 0);
    set_int(s, RCVHWM, 0);
    set_int(s, LINGER, 0);
    return s;
}

/* "{msg_id}-{src_cb}-{dst_cb}-{body}": the three ids and where the body
 * starts; 0 on a malformed payload. */
static int parse(const char *p, size_t n, uint64_t id[3], size_t *body) {
    size_t i = 0;
    for (int f = 0; f < 3; f++) {
        uint64_t v = 0;
        size_t start = i;
        while (i < n && p[i] >= '0' && p[i] <= '9') v = v * 10 + (uint64_t)(p[i++] - '0');
        if (i == start || i >= n || p[i] != '-') return 0;
        id[f] = v;
        i++;
    }
    *body = i;
    return 1;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int server(const char *endpoint, const char *secret) {
    void *ctx = zmq_ctx_new();
    void *r = socket_of(ctx, ROUTER);
    uint8_t key[32];
    if (strcmp(secret, "-") != 0) { /* "-": NULL, for the plaintext cells */
        if (!zmq_z85_decode(key, secret)) die("secret key");
        set_int(r, CURVE_SERVER, 1);
        if (zmq_setsockopt(r, CURVE_SECRETKEY, key, 32) != 0) die("curve secret");
    }
    if (zmq_bind(r, endpoint) != 0) die("bind");
    printf("READY\n");
    fflush(stdout);
    static char peer[256], frame[MAX_FRAME], out[MAX_FRAME + 64];
    static const char identity[] = "libzmq-curve-server";
    uint64_t next_id = 0;
    for (;;) {
        int pn = zmq_recv(r, peer, sizeof peer, 0);
        if (pn < 0) die("recv");
        int more = 0, n = 0;
        size_t sz = sizeof more;
        /* The delimiter, then the payload (the last frame). */
        do {
            n = zmq_recv(r, frame, sizeof frame, 0);
            if (n < 0) die("recv");
            zmq_getsockopt(r, RCVMORE, &more, &sz);
        } while (more);
        uint64_t id[3];
        size_t body;
        if (n > MAX_FRAME || !parse(frame, (size_t)n, id, &body) || id[2] == 2) continue;
        int len = snprintf(out, 64, "%llu-0-2-", (unsigned long long)id[0]);
        zmq_send(r, peer, (size_t)pn, SNDMORE);
        zmq_send(r, identity, sizeof identity - 1, SNDMORE);
        zmq_send(r, "", 0, SNDMORE);
        zmq_send(r, out, (size_t)len, 0);
        if (id[2] == 1) {
            len = snprintf(out, 64, "%llu-0-%llu-", (unsigned long long)next_id++,
                           (unsigned long long)id[1]);
            memcpy(out + len, frame + body, (size_t)n - body);
            zmq_send(r, peer, (size_t)pn, SNDMORE);
            zmq_send(r, identity, sizeof identity - 1, SNDMORE);
            zmq_send(r, "", 0, SNDMORE);
            zmq_send(r, out, (size_t)len + ((size_t)n - body), 0);
        }
    }
    return 0;
}

static int client(const char *endpoint, const char *server_public, size_t size, int in_flight,
                  double warmup, double seconds) {
    void *ctx = zmq_ctx_new();
    void *d = socket_of(ctx, DEALER);
    char pub[41], sec[41];
    uint8_t key[32];
    if (strcmp(server_public, "-") != 0) { /* "-": NULL */
        if (zmq_curve_keypair(pub, sec) != 0) die("keypair");
        if (!zmq_z85_decode(key, server_public)) die("server key");
        if (zmq_setsockopt(d, CURVE_SERVERKEY, key, 32) != 0) die("curve server key");
        zmq_z85_decode(key, pub);
        if (zmq_setsockopt(d, CURVE_PUBLICKEY, key, 32) != 0) die("curve public key");
        zmq_z85_decode(key, sec);
        if (zmq_setsockopt(d, CURVE_SECRETKEY, key, 32) != 0) die("curve secret key");
    }
    set_int(d, RCVTIMEO, 5000);
    if (zmq_connect(d, endpoint) != 0) die("connect");
    char *body = malloc(size);
    memset(body, 'x', size);
    static char frame[MAX_FRAME], out[MAX_FRAME + 64];
    uint64_t next_id = 0;
    /* Request slot i asks for callback 4 + i, so its reply names it. */
    for (int i = 0; i < in_flight; i++) {
        int len = snprintf(out, 64, "%llu-%d-1-", (unsigned long long)next_id++, 4 + i);
        memcpy(out + len, body, size);
        zmq_send(d, "", 0, SNDMORE);
        zmq_send(d, out, (size_t)len + size, 0);
    }
    double start = now(), measure_from = start + warmup, end = measure_from + seconds;
    uint64_t counted = 0;
    double t;
    while ((t = now()) < end) {
        int more = 0, n = 0;
        size_t sz = sizeof more;
        do {
            n = zmq_recv(d, frame, sizeof frame, 0);
            if (n < 0) die("recv (timed out?)");
            zmq_getsockopt(d, RCVMORE, &more, &sz);
        } while (more);
        uint64_t id[3];
        size_t at;
        if (n > MAX_FRAME || !parse(frame, (size_t)n, id, &at) || id[2] == 2) continue;
        int len = snprintf(out, 64, "%llu-0-2-", (unsigned long long)id[0]);
        zmq_send(d, "", 0, SNDMORE);
        zmq_send(d, out, (size_t)len, 0);
        if ((size_t)n - at != size) { fprintf(stderr, "wrong reply size\n"); exit(1); }
        if (t >= measure_from) counted++;
        len = snprintf(out, 64, "%llu-%llu-1-", (unsigned long long)next_id++,
                       (unsigned long long)id[2]);
        memcpy(out + len, body, size);
        zmq_send(d, "", 0, SNDMORE);
        zmq_send(d, out, (size_t)len + size, 0);
    }
    printf("%.0f\n", (double)counted / seconds);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "server") == 0) return server(argv[2], argv[3]);
    if (argc == 8 && strcmp(argv[1], "client") == 0)
        return client(argv[2], argv[3], (size_t)atol(argv[4]), atoi(argv[5]), atof(argv[6]),
                      atof(argv[7]));
    fprintf(stderr, "usage: zmq_curve server ENDPOINT SECRET_Z85 | client ENDPOINT SERVER_PUB SIZE "
                    "IN_FLIGHT WARMUP_S SECONDS\n");
    return 2;
}
