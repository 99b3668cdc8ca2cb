/* LD_PRELOAD shim for wrk (forklift-bench's tls-resume and tls-full workloads), built by the
 * harness with `cc -shared -fPIC -O2 -o tls-sessions.so tls-sessions.c -ldl`.
 *
 * It counts wrk's completed TLS handshakes, resumed and full (SSL_session_reused after
 * SSL_connect returns 1), and writes "resumed N full M" to $FORKLIFT_BENCH_TLS_COUNTS when wrk
 * exits. With FORKLIFT_BENCH_TLS_NO_RESUME=1 it makes wrk forget its session whenever it
 * reuses an SSL object for a new connection (wrk calls SSL_clear, which keeps the session, and
 * the next SSL_connect offers it), so every handshake is a full one whatever the server allows.
 * No OpenSSL headers needed: the few functions are declared here and found with dlsym. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

static atomic_ulong resumed, full;

static void *real(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (!f) {
        fprintf(stderr, "tls-sessions.so: %s not found\n", name);
        abort();
    }
    return f;
}

int SSL_connect(SSL *s) {
    static int (*connect)(SSL *);
    static int (*reused)(const SSL *);
    if (!connect) {
        connect = (int (*)(SSL *))real("SSL_connect");
        reused = (int (*)(const SSL *))real("SSL_session_reused");
    }
    int r = connect(s);
    if (r == 1) {
        if (reused(s))
            atomic_fetch_add(&resumed, 1);
        else
            atomic_fetch_add(&full, 1);
    }
    return r;
}

int SSL_clear(SSL *s) {
    static int (*clear)(SSL *);
    static int (*set_session)(SSL *, SSL_SESSION *);
    if (!clear) {
        clear = (int (*)(SSL *))real("SSL_clear");
        set_session = (int (*)(SSL *, SSL_SESSION *))real("SSL_set_session");
    }
    int r = clear(s);
    const char *no = getenv("FORKLIFT_BENCH_TLS_NO_RESUME");
    if (no && no[0] == '1')
        set_session(s, NULL);
    return r;
}

__attribute__((destructor)) static void write_counts(void) {
    const char *path = getenv("FORKLIFT_BENCH_TLS_COUNTS");
    if (!path)
        return;
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    fprintf(f, "resumed %lu full %lu\n", atomic_load(&resumed), atomic_load(&full));
    fclose(f);
}
