/* fuzz.h — what the harnesses share: the libFuzzer entry point, a reader
 * that turns the fuzzer's bytes into choices, and a check that aborts (the
 * crash libFuzzer and the replay runner both report). */
#ifndef REGOPT_FUZZ_H
#define REGOPT_FUZZ_H

#include <regopt.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant of the API contract; failing it is a bug worth a crash. */
#define FZ_CHECK(cond, ...)                                                              \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* The input, consumed front to back; past its end every read is 0, so any
 * prefix of an interesting input is still a valid (shorter) run. */
typedef struct fz {
    const uint8_t *p;
    size_t n;
} fz;

static inline uint8_t fz_u8(fz *f)
{
    uint8_t v = 0;
    if (f->n) {
        v = *f->p++;
        f->n--;
    }
    return v;
}

static inline uint32_t fz_u32(fz *f)
{
    uint32_t v = 0;
    int i;
    for (i = 0; i < 4; i++)
        v |= (uint32_t)fz_u8(f) << (8 * i);
    return v;
}

static inline uint64_t fz_u64(fz *f)
{
    uint64_t lo = fz_u32(f);
    return lo | (uint64_t)fz_u32(f) << 32;
}

/* A value in [0, n), n > 0. */
static inline size_t fz_below(fz *f, size_t n) { return (size_t)fz_u32(f) % n; }

/* Mostly the values where bounds checks go wrong, sometimes any bits. */
static inline double fz_double(fz *f)
{
    static const double edge[] = {0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-12, 1e-7, 0.05, 0.999,
                                  1e3, 1e3 + 1e-9, 1e300, -1e300, 9007199254740992.0,
                                  9007199254740993.0, 2147483648.0, -2147483649.0,
                                  9.3e18, -9.3e18, 1e-320};
    uint8_t how = fz_u8(f);
    uint64_t bits;
    double d;
    if (how < 160)
        return edge[how % (sizeof edge / sizeof edge[0])];
    if (how < 176)
        return how & 1 ? NAN : (how & 2 ? -INFINITY : INFINITY);
    if (how < 216)
        return (double)(int32_t)fz_u32(f) / 16.0;
    bits = fz_u64(f);
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline int64_t fz_int64(fz *f)
{
    static const int64_t edge[] = {0, 1, -1, 2, 3, 4, 5, 64, 65, 1000, INT32_MAX,
                                   (int64_t)INT32_MAX + 1, INT64_MAX, INT64_MIN,
                                   (int64_t)1 << 53, ((int64_t)1 << 53) + 1};
    uint8_t how = fz_u8(f);
    if (how < 200)
        return edge[how % (sizeof edge / sizeof edge[0])];
    return (int64_t)fz_u64(f);
}

/* A NUL-terminated string of up to cap - 1 bytes, any byte values. */
static inline void fz_string(fz *f, char *buf, size_t cap)
{
    size_t len = fz_below(f, cap), i;
    for (i = 0; i < len; i++)
        buf[i] = (char)fz_u8(f);
    buf[len] = '\0';
}

/* Every status is one of the documented codes. */
static inline int fz_known_status(regopt_status st)
{
    return strcmp(regopt_status_string(st), "unknown status") != 0;
}

/* A message is a NUL-terminated string within the library's fixed size.
 * (Not checked: that it is one line. Messages quote caller-supplied names
 * as given, control bytes included.) */
static inline int fz_sane_message(const char *msg)
{
    return msg && strlen(msg) < 256;
}

/* Every key the library knows, found once by asking it (keys are spaced-out
 * enum values below 10000), so a harness can pick valid keys most of the
 * time and fuzz the rest. */
static inline size_t fz_known_keys(const regopt_key **out)
{
    static regopt_key keys[512];
    static size_t n;
    static int done;
    if (!done) {
        int k;
        for (k = 0; k < 10000 && n < sizeof keys / sizeof keys[0]; k++)
            if (regopt_key_info((regopt_key)k, NULL, NULL, NULL, NULL, NULL, NULL) == REGOPT_OK)
                keys[n++] = (regopt_key)k;
        done = 1;
    }
    *out = keys;
    return n;
}

static inline regopt_key fz_key(fz *f)
{
    const regopt_key *keys;
    size_t n = fz_known_keys(&keys);
    if (n && fz_u8(f) < 224)
        return keys[fz_below(f, n)];
    return (regopt_key)(int32_t)fz_u32(f);
}

#endif
