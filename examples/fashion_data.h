/* fashion_data.h — Fashion-MNIST for examples/demo_fashion.c: the idx files
 * of Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist,
 * gzip-compressed: read through `gzip -dc`, or the uncompressed file if it
 * is there), pixels scaled to [0, 1]; and the demo's draws from them: a
 * random subset of the training images, symmetric label noise, a held-out
 * part for --tune.
 *
 * Header-only (static functions), for one program. */
#ifndef FASHION_DATA_H
#define FASHION_DATA_H

#include <regopt.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FASHION_PIXELS 784
#define FASHION_CLASSES 10
#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

typedef struct fashion_set {
    size_t n;
    float *x;   /* n x FASHION_PIXELS, in [0, 1] */
    int32_t *y; /* n labels in [0, 10) */
} fashion_set;

static void fashion_free(fashion_set *s)
{
    free(s->x);
    free(s->y);
    memset(s, 0, sizeof *s);
}

static int fashion_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The stream of idx file `name` under dir: the file itself, or gzip -dc of
 * name.gz. *piped says which fclose/pclose it needs. NULL if neither exists. */
static FILE *fashion_open(const char *dir, const char *name, int *piped)
{
    char path[1024], cmd[1200];
    const char *c;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *piped = 0;
    if (fashion_exists(path))
        return fopen(path, "rb");
    snprintf(path, sizeof path, "%s/%s.gz", dir, name);
    if (!fashion_exists(path))
        return NULL;
    for (c = path; *c; c++) /* the path goes into a shell command */
        if (*c == '\'')
            return NULL;
    snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
    *piped = 1;
    return popen(cmd, "r");
}

static int fashion_close(FILE *f, int piped) { return piped ? pclose(f) : fclose(f); }

static uint32_t fashion_be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* part "train" or "t10k": images and labels into *s. Returns 0; 1 if the
 * files are not there (the package is not installed); -1 on a bad file. */
static int fashion_load(const char *dir, const char *part, fashion_set *s)
{
    char name[64];
    unsigned char hdr[16], *buf = NULL;
    FILE *f;
    int piped, rc = -1;
    size_t i, n = 0;
    memset(s, 0, sizeof *s);
    snprintf(name, sizeof name, "%s-images-idx3-ubyte", part);
    if (!(f = fashion_open(dir, name, &piped)))
        return 1;
    if (fread(hdr, 1, 16, f) == 16 && fashion_be32(hdr) == 0x803 &&
        fashion_be32(hdr + 8) == 28 && fashion_be32(hdr + 12) == 28) {
        n = fashion_be32(hdr + 4);
        buf = malloc(n * FASHION_PIXELS);
        s->x = malloc(n * FASHION_PIXELS * sizeof *s->x);
        if (buf && s->x && fread(buf, 1, n * FASHION_PIXELS, f) == n * FASHION_PIXELS) {
            for (i = 0; i < n * FASHION_PIXELS; i++)
                s->x[i] = (float)buf[i] / 255.0f;
            rc = 0;
        }
    }
    if (fashion_close(f, piped) != 0)
        rc = -1;
    free(buf);
    if (rc)
        goto bad;
    rc = -1;
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte", part);
    if (!(f = fashion_open(dir, name, &piped)))
        goto bad;
    buf = malloc(n ? n : 1);
    s->y = malloc((n ? n : 1) * sizeof *s->y);
    if (buf && s->y && fread(hdr, 1, 8, f) == 8 && fashion_be32(hdr) == 0x801 &&
        fashion_be32(hdr + 4) == n && fread(buf, 1, n, f) == n) {
        rc = 0;
        for (i = 0; i < n; i++)
            if ((s->y[i] = buf[i]) >= FASHION_CLASSES)
                rc = -1;
    }
    if (fashion_close(f, piped) != 0)
        rc = -1;
    free(buf);
    if (rc)
        goto bad;
    s->n = n;
    return 0;
bad:
    fprintf(stderr, "demo_fashion: %s/%s-*-idx*-ubyte: not a Fashion-MNIST idx file\n", dir,
            part);
    fashion_free(s);
    return -1;
}

/* A deterministic permutation of 0..n-1 from the library's generator. */
static void fashion_shuffle(size_t *idx, size_t n, uint64_t seed)
{
    size_t i, j, t;
    float u;
    for (i = 0; i < n; i++)
        idx[i] = i;
    for (i = n; i > 1; i--) {
        if (regopt_random_uniform(seed, i, &u, 1) != REGOPT_OK)
            return;
        j = (size_t)(u * (float)i);
        j = j < i ? j : i - 1;
        t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

/* n images of `from` drawn at random (all of them, in a random order, when n
 * is from->n), each label replaced with probability `noise` by a uniformly
 * random class (symmetric noise: it may draw the true class again); the
 * share of labels that changed into *changed. */
static int fashion_draw(const fashion_set *from, size_t n, double noise, uint64_t seed,
                        fashion_set *to, double *changed)
{
    size_t *idx = malloc(from->n * sizeof *idx), i, k = 0;
    float u[2];
    to->n = n;
    to->x = malloc(n * FASHION_PIXELS * sizeof *to->x);
    to->y = malloc(n * sizeof *to->y);
    if (!idx || !to->x || !to->y || n > from->n) {
        free(idx);
        fashion_free(to);
        return -1;
    }
    fashion_shuffle(idx, from->n, seed * 7919u + 1u);
    for (i = 0; i < n; i++) {
        int32_t y = from->y[idx[i]];
        memcpy(to->x + i * FASHION_PIXELS, from->x + idx[i] * FASHION_PIXELS,
               FASHION_PIXELS * sizeof *to->x);
        regopt_random_uniform(seed * 104729u + 3u, 2 * i, u, 2);
        if (u[0] < noise)
            y = (int32_t)(u[1] * FASHION_CLASSES) % FASHION_CLASSES;
        k += y != from->y[idx[i]];
        to->y[i] = y;
    }
    free(idx);
    *changed = n ? (double)k / (double)n : 0.0;
    return 0;
}

#endif
